//! The token cleaner: a bootstrap token (Secret `kube-system/bootstrap-token-<id>`) is
//! deleted once its `expiration` has passed, as upstream's tokencleaner does (the API
//! server refuses an expired token already; this removes what is left).

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::Error;

/// When a token's Secret expires (none: never).
fn expiry(secret: &Secret) -> Option<time::OffsetDateTime> {
    let raw = secret.data.as_ref()?.get("expiration")?;
    let text = std::str::from_utf8(&raw.0).ok()?;
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

pub async fn run(client: kube::Client) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client, "kube-system");
    let mut events = watcher::watcher(
        api.clone(),
        watcher::Config::default().fields("type=bootstrap.kubernetes.io/token"),
    )
    .default_backoff()
    .boxed();
    let mut expiring: BTreeMap<String, time::OffsetDateTime> = BTreeMap::new();
    loop {
        let next = expiring.values().min().copied();
        let wait = next.map_or(std::time::Duration::from_secs(3600), |at| {
            std::time::Duration::try_from(at - time::OffsetDateTime::now_utc()).unwrap_or_default()
        });
        tokio::select! {
            event = events.next() => match event {
                None => return Ok(()),
                Some(Ok(Event::Apply(s) | Event::InitApply(s))) => {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    match expiry(&s) {
                        Some(at) => expiring.insert(name, at),
                        None => expiring.remove(&name),
                    };
                }
                Some(Ok(Event::Delete(s))) => {
                    expiring.remove(&s.metadata.name.unwrap_or_default());
                }
                Some(Ok(Event::Init)) => expiring.clear(),
                Some(Ok(Event::InitDone)) | Some(Err(_)) => {}
            },
            () = tokio::time::sleep(wait), if next.is_some() => {
                let now = time::OffsetDateTime::now_utc();
                let expired: Vec<String> = expiring
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in expired {
                    expiring.remove(&name);
                    match crate::ignore_not_found(api.delete(&name, &DeleteParams::default()).await) {
                        Ok(()) => tracing::info!(secret = %name, "deleted an expired bootstrap token"),
                        Err(e) => {
                            tracing::warn!(secret = %name, error = %e, "deleting an expired bootstrap token; retrying in a minute");
                            expiring.insert(name, now + time::Duration::minutes(1));
                        }
                    }
                }
            }
        }
    }
}
