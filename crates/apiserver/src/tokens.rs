//! Service account tokens as kube-apiserver issues them: ES256 JWTs signed with the
//! cluster's service account key (`pki/sa.key`, made on the first start), with
//! upstream's claims (`iss`, `sub` = `system:serviceaccount:NS:NAME`, `aud`, `exp`,
//! `iat`, `nbf`, `jti` and the `kubernetes.io` claim naming the namespace, the account
//! and the object the token is bound to). The TokenRequest API
//! (`serviceaccounts/{name}/token`) hands them out, and the issuer's OIDC discovery
//! document and keys are served at `/.well-known/openid-configuration` and
//! `/openid/v1/jwks` so other parties can verify them; `verify` checks them for
//! authentication (`authn.rs`).

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use sha2::Digest;

use crate::registry::store::Registry;
use crate::status::{ApiError, FieldError, Subject};

/// Upstream's default lifetime of a requested token, its floor and its ceiling.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) struct Issuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    jwk: Value,
    /// The public key (uncompressed point), to verify tokens with.
    point: Vec<u8>,
    /// The `iss` of every token, and the base of the discovery URLs.
    pub(crate) url: String,
}

impl Issuer {
    /// An issuer signing with the P-256 key in `pkcs8` (DER), whose public half is
    /// `spki` (DER) and `point` (the uncompressed point, 65 bytes).
    pub(crate) fn new(
        pkcs8: &[u8],
        spki: &[u8],
        point: &[u8],
        url: &str,
    ) -> Result<Issuer, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| format!("the service account key is no P-256 key: {e}"))?;
        if point.len() != 65 || point[0] != 4 {
            return Err("the service account key's public point is not uncompressed P-256".into());
        }
        // Upstream's key id: the SHA-256 of the DER public key, base64url.
        let kid = b64(&sha2::Sha256::digest(spki));
        let jwk = json!({
            "use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        Ok(Issuer {
            key,
            rng,
            kid,
            jwk,
            point: point.to_vec(),
            url: url.to_string(),
        })
    }

    /// A signed JWT (compact form) with these claims.
    pub(crate) fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))?;
        Ok(format!("{input}.{}", b64(signature.as_ref())))
    }

    /// The claims of one of this issuer's tokens, checked: signature, issuer, one of
    /// `audiences` (default: the issuer), and lifetime (a minute's leeway, as upstream).
    pub(crate) fn verify(
        &self,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<Value, String> {
        let decode = |part: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| "the token is not base64url".to_string())
        };
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the token is not a JWT".into());
        };
        let head: Value = serde_json::from_slice(&decode(header)?)
            .map_err(|_| "the token's header is not JSON".to_string())?;
        if head["alg"] != "ES256" || head["kid"].as_str().is_some_and(|k| k != self.kid) {
            return Err("the token is not signed with this cluster's key".into());
        }
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &self.point,
        )
        .verify(
            format!("{header}.{payload}").as_bytes(),
            &decode(signature)?,
        )
        .map_err(|_| "the token's signature does not verify".to_string())?;
        let claims: Value = serde_json::from_slice(&decode(payload)?)
            .map_err(|_| "the token's claims are not JSON".to_string())?;
        if claims["iss"].as_str() != Some(self.url.as_str()) {
            return Err("the token is from another issuer".into());
        }
        let own = [self.url.clone()];
        let wanted = audiences.unwrap_or(&own);
        let audience_ok = match &claims["aud"] {
            Value::String(a) => wanted.contains(a),
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| wanted.iter().any(|w| w == a)),
            _ => false,
        };
        if !audience_ok {
            return Err("the token is for another audience".into());
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        const LEEWAY: i64 = 60;
        if claims["exp"].as_i64().is_none_or(|exp| exp + LEEWAY < now) {
            return Err("the token has expired".into());
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf - LEEWAY > now) {
            return Err("the token is not valid yet".into());
        }
        Ok(claims)
    }

    /// `/openid/v1/jwks`.
    pub(crate) fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// `/.well-known/openid-configuration`.
    pub(crate) fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/openid/v1/jwks", self.url.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

fn invalid(name: &str, field: &str, value: i64, detail: &str) -> ApiError {
    ApiError::invalid(
        "TokenRequest",
        "authentication.k8s.io",
        name,
        vec![FieldError::invalid_number(field, value, detail)],
    )
}

/// `POST serviceaccounts/{name}/token`: a token for the account, bound to the object
/// the request names (a Pod, Secret or Node that must exist, with that uid).
pub(crate) async fn request(
    issuer: &Issuer,
    registry: &Registry,
    namespace: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        v => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    if expiration < MIN_EXPIRATION {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if audiences.is_empty() {
        audiences.push(issuer.url.clone());
    }
    let accounts = crate::registry::find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("no serviceaccounts resource"))?;
    let account = registry.get(accounts, Some(namespace), name).await?;
    let mut kubernetes = json!({
        "namespace": namespace,
        "serviceaccount": {"name": name, "uid": account["metadata"]["uid"]},
    });
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let object_name = bound["name"].as_str().unwrap_or_default();
        let api_version = bound["apiVersion"].as_str().unwrap_or("v1");
        let plural = match (api_version, kind) {
            ("v1" | "", "Pod") => "pods",
            ("v1" | "", "Secret") => "secrets",
            ("v1" | "", "Node") => "nodes",
            _ => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount \"{name}\" to object of type /{api_version}, Kind={kind}"
                )));
            }
        };
        let resource = crate::registry::find("", "v1", plural)
            .ok_or_else(|| ApiError::internal("no such bound resource"))?;
        let ns = (plural != "nodes").then_some(namespace);
        let object = registry.get(resource, ns, object_name).await?;
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        if let Some(wanted) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && wanted != uid
        {
            return Err(ApiError::conflict_because(
                &Subject {
                    group: "",
                    resource: kind,
                    name: object_name,
                },
                &format!(
                    "the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        let claim = json!({"name": object_name, "uid": uid});
        match plural {
            "pods" => {
                // A pod's token is its own account's (upstream's check).
                let runs_as = object["spec"]["serviceAccountName"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default");
                if runs_as != name {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                    )));
                }
                kubernetes["pod"] = claim;
                if let Some(node) = object["spec"]["nodeName"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                {
                    let mut node_claim = json!({"name": node});
                    if let Some(nodes) = crate::registry::find("", "v1", "nodes")
                        && let Ok(found) = registry.get(nodes, None, node).await
                    {
                        node_claim["uid"] = found["metadata"]["uid"].clone();
                    }
                    kubernetes["node"] = node_claim;
                }
            }
            "secrets" => kubernetes["secret"] = claim,
            _ => kubernetes["node"] = claim,
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expires = now + expiration;
    let claims = json!({
        "aud": audiences,
        "exp": expires,
        "iat": now,
        "iss": issuer.url,
        "jti": crate::registry::object::new_uid(),
        "kubernetes.io": kubernetes,
        "nbf": now,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    });
    let token = issuer.sign(&claims)?;
    let expiration_timestamp = time::OffsetDateTime::from_unix_timestamp(expires)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if bound.is_object() {
        spec["boundObjectRef"] = bound.clone();
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": crate::registry::object::now(),
        },
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expiration_timestamp},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Issuer {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate().expect("key");
        Issuer::new(
            &key.serialize_der(),
            &key.subject_public_key_info(),
            key.public_key_raw(),
            "https://kubernetes.default.svc.cluster.local",
        )
        .expect("issuer")
    }

    #[test]
    fn tokens_verify_with_the_published_key() {
        let issuer = issuer();
        let token = issuer
            .sign(&json!({"sub": "system:serviceaccount:default:app"}))
            .expect("token");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |p: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .expect("base64url")
        };
        let header: Value = serde_json::from_slice(&decode(parts[0])).expect("header");
        let jwk = &issuer.jwks()["keys"][0];
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], jwk["kid"]);
        let mut point = vec![4u8];
        point.extend(decode(jwk["x"].as_str().expect("x")));
        point.extend(decode(jwk["y"].as_str().expect("y")));
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            point,
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &decode(parts[2]))
            .expect("the signature verifies with the JWKS key");
        assert!(
            public.verify(b"other", &decode(parts[2])).is_err(),
            "and nothing else"
        );
        assert_eq!(
            issuer.discovery()["jwks_uri"],
            "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
        );
    }
}
