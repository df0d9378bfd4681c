//! Service account tokens for projected `serviceAccountToken` volume sources, as
//! upstream's token manager gets them: from the API server's TokenRequest API
//! (`serviceaccounts/{name}/token`), bound to the pod, with the audience and lifetime
//! the volume asks for, and fetched again once 80% of that lifetime has passed (or a
//! day).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use kube::Api;
use kube::api::PostParams;

/// Upstream's default lifetime of a projected token, and its floor.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
/// A token is fetched again after this long at most.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The token of one pod, account, audience and lifetime.
#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    pod_uid: String,
    account: String,
    audience: String,
    expiration: i64,
}

struct Cached {
    token: String,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

static CACHE: LazyLock<Mutex<HashMap<Key, Cached>>> = LazyLock::new(Default::default);

fn cache() -> std::sync::MutexGuard<'static, HashMap<Key, Cached>> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The token a projection asks for, fetched when it is missing or due for refresh.
pub async fn token(
    client: &kube::Client,
    pod: &Pod,
    source: &ServiceAccountTokenProjection,
) -> Result<String, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let key = Key {
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        account: account.clone(),
        audience: source.audience.clone().unwrap_or_default(),
        expiration: source
            .expiration_seconds
            .unwrap_or(DEFAULT_EXPIRATION)
            .max(MIN_EXPIRATION),
    };
    let now = SystemTime::now();
    if let Some(cached) = cache().get(&key)
        && now < cached.refresh_at
    {
        return Ok(cached.token.clone());
    }
    let (token, refresh_at, expires_at) = match request(client, pod, &namespace, &key).await {
        Ok(fetched) => fetched,
        Err(e) => {
            // A token that still works is better than none while the API is away.
            if let Some(cached) = cache().get(&key)
                && now < cached.expires_at
            {
                tracing::warn!(error = %e, "refreshing a service account token: keeping the old one");
                return Ok(cached.token.clone());
            }
            return Err(format!("failed to fetch token: {e}"));
        }
    };
    let mut cache = cache();
    // Expired tokens (of pods gone while their token was being fetched) go.
    cache.retain(|_, cached| cached.expires_at > now);
    cache.insert(
        key,
        Cached {
            token: token.clone(),
            refresh_at,
            expires_at,
        },
    );
    Ok(token)
}

/// A TokenRequest bound to the pod; the token, when to fetch it again (80% of its
/// lifetime, at most a day) and when it expires.
async fn request(
    client: &kube::Client,
    pod: &Pod,
    namespace: &str,
    key: &Key,
) -> Result<(String, SystemTime, SystemTime), kube::Error> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: if key.audience.is_empty() {
                Vec::new()
            } else {
                vec![key.audience.clone()]
            },
            expiration_seconds: Some(key.expiration),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued_at = SystemTime::now();
    let answer = accounts
        .create_token_request(&key.account, &PostParams::default(), &request)
        .await?;
    let Some(status) = answer.status else {
        return Err(kube::Error::Service(
            "the TokenRequest answer has no status".into(),
        ));
    };
    let expires = SystemTime::from(status.expiration_timestamp.0);
    let lifetime = expires
        .duration_since(issued_at)
        .unwrap_or(Duration::from_secs(
            u64::try_from(key.expiration).unwrap_or(3600),
        ));
    let refresh_at = issued_at + lifetime.mul_f64(0.8).min(MAX_AGE);
    Ok((status.token, refresh_at, expires))
}

/// Forgets the tokens of a pod that is gone.
pub fn forget(pod_uid: &str) {
    cache().retain(|key, _| key.pod_uid != pod_uid);
}
