//! Authentication, as kube-apiserver's chain runs it: a client certificate from the
//! cluster CA (verified in the TLS handshake) makes its CN the user and its O entries
//! the groups; else a bearer token from the static token file (`--token-auth-file`), a
//! bootstrap token ([`crate::join`]) or one of this cluster's service account JWTs (signature, issuer, audience, lifetime,
//! and the account and the pod, secret or node it is bound to still existing with the
//! uids it names) is that user; else the request is anonymous (`system:anonymous`,
//! unless `--anonymous-auth=false` makes it 401). A bearer token that is not valid is
//! 401 Unauthorized, as upstream. Every authenticated user is in
//! `system:authenticated`. `SelfSubjectReview` (`kubectl auth whoami`) and
//! `TokenReview` report what was found. What each user may do is [`crate::authz`]'s.

use std::collections::BTreeMap;

use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Body};
use serde_json::{Value, json};

use crate::handler::State;
use crate::status::ApiError;

/// Who made a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub(crate) fn anonymous() -> UserInfo {
        UserInfo {
            username: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Default::default()
        }
    }

    /// `authentication.k8s.io/v1` UserInfo.
    pub(crate) fn to_json(&self) -> Value {
        let mut out = json!({"username": self.username, "groups": self.groups});
        if !self.uid.is_empty() {
            out["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            out["extra"] = json!(self.extra);
        }
        out
    }
}

/// The user a connection's client certificate names (none: no certificate).
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerUser(pub Option<UserInfo>);

/// The user of a verified client certificate: CN and O, as upstream's x509 authenticator.
pub(crate) fn certificate_user(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    // Several CNs: the last one, as Go's x509 package reads a subject.
    let username = subject
        .iter_common_name()
        .last()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    if username.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(UserInfo {
        username,
        groups,
        ..Default::default()
    })
}

/// The bearer token of a request, if it carries one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Why a bearer token did not authenticate.
pub(crate) enum TokenError {
    /// Not a valid token of this cluster (401).
    Invalid(String),
    /// The datastore could not say (500: the token may be fine).
    Internal(ApiError),
}

impl From<String> for TokenError {
    fn from(reason: String) -> Self {
        TokenError::Invalid(reason)
    }
}

/// Static bearer tokens (`--token-auth-file`), as upstream's tokenfile authenticator
/// reads them: CSV lines `token,user,uid[,"group1,group2"]`.
#[derive(Debug, Default)]
pub(crate) struct StaticTokens(std::collections::HashMap<String, UserInfo>);

impl StaticTokens {
    pub(crate) fn load(path: &std::path::Path) -> Result<StaticTokens, crate::Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::io("reading the token file", path, e))?;
        Self::parse(&text)
            .map_err(|e| crate::Error::Bootstrap(format!("token file {}: {e}", path.display())))
    }

    pub(crate) fn parse(text: &str) -> Result<StaticTokens, String> {
        let mut tokens = std::collections::HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let fields = csv_fields(line);
            if fields.len() < 3 {
                return Err(format!(
                    "line {}: must have at least 3 columns (token, user name, user uid), found {}",
                    n + 1,
                    fields.len()
                ));
            }
            if fields[0].is_empty() {
                return Err(format!("line {}: the token is empty", n + 1));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                fields[0].clone(),
                UserInfo {
                    username: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                    extra: BTreeMap::new(),
                },
            );
        }
        Ok(StaticTokens(tokens))
    }

    fn get(&self, token: &str) -> Option<UserInfo> {
        self.0.get(token).cloned()
    }
}

/// One CSV record: fields split at commas; a double-quoted field may hold commas and
/// `""` for a quote; spaces before a field are dropped (Go's csv, TrimLeadingSpace).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut quoted, mut at_start) = (false, true);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' if at_start => {}
            '"' if at_start => (quoted, at_start) = (true, false),
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            ',' if !quoted => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            c => {
                field.push(c);
                at_start = false;
            }
        }
    }
    fields.push(field);
    fields
}

/// Who the request is from; 401 for a bearer token that is not valid, or for no
/// credentials when anonymous requests are off.
async fn authenticate(
    state: &State,
    peer: Option<&PeerUser>,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let mut user = if let Some(user) = peer.and_then(|p| p.0.clone()) {
        user
    } else if let Some(token) = bearer(headers) {
        if let Some(user) = state.static_tokens.get(token) {
            user
        } else {
            let found = match crate::join::token_user(state, token).await {
                Ok(Some(user)) => Ok((user, Vec::new())),
                Ok(None) => service_account_user(state, token, None).await,
                Err(e) => Err(e),
            };
            match found {
                Ok((user, _)) => user,
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(%reason, "a bearer token was refused");
                    return Err(ApiError::unauthorized());
                }
                Err(TokenError::Internal(e)) => return Err(e),
            }
        }
    } else if state.anonymous {
        return Ok(UserInfo::anonymous());
    } else {
        return Err(ApiError::unauthorized());
    };
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".into());
    }
    Ok(user)
}

/// The service account a token of this cluster stands for, checked as upstream's
/// validator does; why not otherwise. `audiences`: the ones the token must carry one of
/// (none: the API server's, its issuer). With the user, the audiences it was accepted
/// for.
pub(crate) async fn service_account_user(
    state: &State,
    token: &str,
    audiences: Option<&[String]>,
) -> Result<(UserInfo, Vec<String>), TokenError> {
    let claims = state.tokens.verify(token, audiences)?;
    let token_audiences: Vec<String> = match &claims["aud"] {
        Value::String(a) => vec![a.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let wanted = audiences
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| vec![state.tokens.url.clone()]);
    let accepted: Vec<String> = wanted
        .into_iter()
        .filter(|a| token_audiences.contains(a))
        .collect();
    let k8s = &claims["kubernetes.io"];
    let namespace = k8s["namespace"].as_str().unwrap_or_default();
    let account = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
    let account_uid = k8s["serviceaccount"]["uid"].as_str().unwrap_or_default();
    if namespace.is_empty() || account.is_empty() {
        return Err(TokenError::Invalid(
            "the token names no service account".into(),
        ));
    }
    let subject = format!("system:serviceaccount:{namespace}:{account}");
    if claims["sub"].as_str() != Some(subject.as_str()) {
        return Err(TokenError::Invalid(
            "the token's subject is not its service account".into(),
        ));
    }
    // Upstream's leeway: an object being deleted keeps its tokens for a minute.
    let deleted_too_long_ago = |stamp: &str| {
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|at| at < time::OffsetDateTime::now_utc() - time::Duration::seconds(60))
    };
    // The account, and what the token is bound to, must still be there.
    let live = |plural: &'static str, ns: Option<&str>, name: &str, uid: &str| {
        let (plural, ns, name, uid) = (
            plural,
            ns.map(str::to_string),
            name.to_string(),
            uid.to_string(),
        );
        async move {
            let resource = crate::registry::find("", "v1", plural).ok_or_else(|| {
                TokenError::Internal(ApiError::internal(format!("no {plural} resource")))
            })?;
            let object = match state.registry.get(resource, ns.as_deref(), &name).await {
                Ok(object) => object,
                Err(e) if e.code == 404 => {
                    return Err(TokenError::Invalid(format!(
                        "{plural} {name:?} is gone: the token has been invalidated"
                    )));
                }
                Err(e) => return Err(TokenError::Internal(e)),
            };
            if object["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                return Err(TokenError::Invalid(format!(
                    "{plural} {name:?} has another uid: the token has been invalidated"
                )));
            }
            if object["metadata"]["deletionTimestamp"]
                .as_str()
                .is_some_and(deleted_too_long_ago)
            {
                return Err(TokenError::Invalid(format!(
                    "{plural} {name:?} is being deleted: the token has been invalidated"
                )));
            }
            Ok::<(), TokenError>(())
        }
    };
    live("serviceaccounts", Some(namespace), account, account_uid).await?;
    let mut extra = BTreeMap::new();
    if let Some(jti) = claims["jti"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_string(),
            vec![format!("JTI={jti}")],
        );
    }
    for (kind, plural) in [("pod", "pods"), ("secret", "secrets")] {
        let bound = &k8s[kind];
        if let (Some(name), Some(uid)) = (bound["name"].as_str(), bound["uid"].as_str()) {
            live(plural, Some(namespace), name, uid).await?;
            if kind == "pod" {
                extra.insert(
                    "authentication.kubernetes.io/pod-name".into(),
                    vec![name.into()],
                );
                extra.insert(
                    "authentication.kubernetes.io/pod-uid".into(),
                    vec![uid.into()],
                );
            }
        }
    }
    if let Some(node) = k8s["node"]["name"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            vec![node.into()],
        );
        if let Some(uid) = k8s["node"]["uid"].as_str() {
            extra.insert(
                "authentication.kubernetes.io/node-uid".into(),
                vec![uid.into()],
            );
        }
    }
    let user = UserInfo {
        username: subject,
        uid: account_uid.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ],
        extra,
    };
    Ok((user, accepted))
}

/// The middleware: every request gets its user (a request extension) or a 401.
pub(crate) async fn layer(
    AxumState(state): AxumState<State>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<PeerUser>().cloned();
    match authenticate(&state, peer.as_ref(), request.headers()).await {
        Ok(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: who the server thinks you
/// are (`kubectl auth whoami`).
pub(crate) async fn self_subject_review(
    user: Option<axum::Extension<UserInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = crate::handler::json_body(&headers, body).await {
        return e.into_response();
    }
    let user = user.map(|u| u.0).unwrap_or_else(UserInfo::anonymous);
    (
        StatusCode::CREATED,
        Json(json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": crate::registry::object::now()},
            "status": {"userInfo": user.to_json()},
        })),
    )
        .into_response()
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: whether a token is one of this
/// cluster's, and whose.
pub(crate) async fn token_review(
    AxumState(state): AxumState<State>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let review = match crate::handler::json_body(&headers, body).await {
        Ok(review) if review.is_object() => review,
        Ok(_) => {
            return ApiError::bad_request("the body of the request must be a JSON object")
                .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Option<Vec<String>> = review["spec"]["audiences"].as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    let wanted = wanted.filter(|a| !a.is_empty());
    let found = match state.static_tokens.get(token) {
        // Static tokens are for the API server's own audience only.
        Some(mut user) if wanted.is_none() => {
            user.groups.push("system:authenticated".into());
            Ok((user, vec![state.tokens.url.clone()]))
        }
        _ => match crate::join::token_user(&state, token).await {
            // So are bootstrap tokens.
            Ok(Some(user)) if wanted.is_none() => Ok((user, vec![state.tokens.url.clone()])),
            Ok(Some(_)) => Err(TokenError::Invalid(
                "bootstrap tokens are for the API server only".into(),
            )),
            Ok(None) => service_account_user(&state, token, wanted.as_deref()).await,
            Err(e) => Err(e),
        },
    };
    let status = match found {
        Ok((user, audiences)) => json!({
            "authenticated": true,
            "user": user.to_json(),
            "audiences": audiences,
        }),
        Err(TokenError::Internal(e)) => return e.into_response(),
        Err(TokenError::Invalid(reason)) => {
            tracing::debug!(%reason, "TokenReview: not authenticated");
            json!({"authenticated": false, "error": "[invalid bearer token, service account token is not valid]"})
        }
    };
    let mut answer = review;
    answer["status"] = status;
    answer["apiVersion"] = json!("authentication.k8s.io/v1");
    answer["kind"] = json!("TokenReview");
    if let Some(meta) = answer["metadata"].as_object_mut() {
        meta.insert(
            "creationTimestamp".into(),
            json!(crate::registry::object::now()),
        );
    } else {
        answer["metadata"] = json!({"creationTimestamp": crate::registry::object::now()});
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_token_files_read_as_upstream() {
        let tokens = StaticTokens::parse(
            "t1,alice,1\n# a comment\nt2, bob ,2,\"dev,ops\"\n\nt3,carol,3,solo\n",
        )
        .expect("parse");
        let alice = tokens.get("t1").expect("alice");
        assert_eq!(
            (alice.username.as_str(), alice.uid.as_str()),
            ("alice", "1")
        );
        assert!(alice.groups.is_empty());
        let bob = tokens.get("t2").expect("bob");
        assert_eq!(bob.username, "bob ");
        assert_eq!(bob.groups, ["dev", "ops"]);
        assert_eq!(tokens.get("t3").expect("carol").groups, ["solo"]);
        assert!(tokens.get("t4").is_none());
        let err = StaticTokens::parse("only,two\n").expect_err("short");
        assert!(err.contains("at least 3 columns"), "{err}");
    }
}
