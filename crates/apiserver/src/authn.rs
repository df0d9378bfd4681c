//! Authentication, as kube-apiserver's chain runs it: a client certificate from the
//! cluster CA (verified in the TLS handshake) makes its CN the user and its O entries
//! the groups; else a bearer token that is one of this cluster's service account JWTs
//! (signature, issuer, audience, lifetime, and the account and the pod, secret or node
//! it is bound to still existing with the uids it names) is that service account; else
//! the request is anonymous (`system:anonymous`). A bearer token that is not valid is
//! 401 Unauthorized, as upstream. Every authenticated user is in
//! `system:authenticated`. `SelfSubjectReview` (`kubectl auth whoami`) and
//! `TokenReview` report what was found. Authorization is not done yet (issue 8's next
//! step): every authenticated or anonymous request is served.

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
    fn anonymous() -> UserInfo {
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
    let username = subject
        .iter_common_name()
        .next()
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
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who the request is from; 401 for a bearer token that is not valid.
async fn authenticate(
    state: &State,
    peer: Option<&PeerUser>,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let mut user = if let Some(user) = peer.and_then(|p| p.0.clone()) {
        user
    } else if let Some(token) = bearer(headers) {
        match service_account_user(state, token, None).await {
            Ok(user) => user,
            Err(reason) => {
                tracing::debug!(%reason, "a bearer token was refused");
                return Err(ApiError::unauthorized());
            }
        }
    } else {
        return Ok(UserInfo::anonymous());
    };
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".into());
    }
    Ok(user)
}

/// The service account a token of this cluster stands for, checked as upstream's
/// validator does; why not otherwise. `audiences`: the ones the token must carry one of
/// (none: the API server's, its issuer).
pub(crate) async fn service_account_user(
    state: &State,
    token: &str,
    audiences: Option<&[String]>,
) -> Result<UserInfo, String> {
    let claims = state.tokens.verify(token, audiences)?;
    let k8s = &claims["kubernetes.io"];
    let namespace = k8s["namespace"].as_str().unwrap_or_default();
    let account = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
    let account_uid = k8s["serviceaccount"]["uid"].as_str().unwrap_or_default();
    if namespace.is_empty() || account.is_empty() {
        return Err("the token names no service account".into());
    }
    let subject = format!("system:serviceaccount:{namespace}:{account}");
    if claims["sub"].as_str() != Some(subject.as_str()) {
        return Err("the token's subject is not its service account".into());
    }
    // The account, and what the token is bound to, must still be there.
    let live = |plural: &'static str, ns: Option<&str>, name: &str, uid: &str| {
        let (plural, ns, name, uid) = (
            plural,
            ns.map(str::to_string),
            name.to_string(),
            uid.to_string(),
        );
        async move {
            let resource = crate::registry::find("", "v1", plural)
                .ok_or_else(|| format!("no {plural} resource"))?;
            let object = state
                .registry
                .get(resource, ns.as_deref(), &name)
                .await
                .map_err(|_| {
                    format!("{plural} {name:?} is gone: the token has been invalidated")
                })?;
            if object["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                return Err(format!(
                    "{plural} {name:?} has another uid: the token has been invalidated"
                ));
            }
            if !object["metadata"]["deletionTimestamp"].is_null() && plural != "serviceaccounts" {
                return Err(format!(
                    "{plural} {name:?} is being deleted: the token has been invalidated"
                ));
            }
            Ok::<(), String>(())
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
    Ok(UserInfo {
        username: subject,
        uid: account_uid.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ],
        extra,
    })
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
        Ok(review) => review,
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
    let status = match service_account_user(&state, token, wanted.as_deref()).await {
        Ok(user) => json!({
            "authenticated": true,
            "user": user.to_json(),
            "audiences": wanted.unwrap_or_else(|| vec![state.tokens.url.clone()]),
        }),
        Err(reason) => {
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
