//! Events for what the controllers do ("Created pod: web-abc12", "Scaled up replica set
//! ..."), in upstream's words, as core/v1 Events that `kubectl describe` shows.
//!
//! Written off the reconcile path by one task per controller; when the API server falls
//! behind, events are dropped rather than queued without bound. Like client-go's
//! recorder, repeats of the same event bump its `count`, and each object gets at most
//! a burst of 25 events and then one per 5 minutes (the spam filter), so a 500-replica
//! scale-up does not write 500 events.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

const BURST: f64 = 25.0;
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// Remembered events and buckets before the maps are cleared.
const MEMORY: usize = 4096;

struct Record {
    object: ObjectReference,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

/// Sends a controller's events to its writer task.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Record>,
}

impl Recorder {
    /// Starts the writer for `component` (upstream's names: `replicaset-controller`, ...).
    pub fn new(client: kube::Client, component: &'static str) -> Recorder {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(write(client, component, rx));
        Recorder { tx }
    }

    pub fn normal<K>(&self, object: &K, reason: &'static str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.send(object, "Normal", reason, message);
    }

    pub fn warning<K>(&self, object: &K, reason: &'static str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.send(object, "Warning", reason, message);
    }

    fn send<K>(&self, object: &K, type_: &'static str, reason: &'static str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let mut object = object.object_ref(&());
        object.field_path = None;
        let _ = self.tx.try_send(Record {
            object,
            type_,
            reason,
            message,
        });
    }
}

/// A token bucket per object: BURST events, then one per REFILL_EVERY.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn write(client: kube::Client, component: &'static str, mut rx: mpsc::Receiver<Record>) {
    // (object uid, reason, message) -> (event namespace, event name, count)
    let mut seen: HashMap<(String, &'static str, String), (String, String, i32)> = HashMap::new();
    let mut buckets: HashMap<String, Bucket> = HashMap::new();
    while let Some(record) = rx.recv().await {
        if seen.len() > MEMORY {
            seen.clear();
        }
        if buckets.len() > MEMORY {
            buckets.clear();
        }
        let uid = record.object.uid.clone().unwrap_or_default();
        let bucket = buckets.entry(uid.clone()).or_insert(Bucket {
            tokens: BURST,
            at: Instant::now(),
        });
        if !bucket.take() {
            continue;
        }
        let ns = record
            .object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let now = Time(Timestamp::now());
        let key = (uid, record.reason, record.message.clone());
        if let Some((ns, name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = serde_json::json!({"count": *count, "lastTimestamp": now});
            let api: Api<Event> = Api::namespaced(client.clone(), ns);
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => continue,
                // Expired or removed: write it anew.
                Err(e) => tracing::debug!(error = %e, "updating an event"),
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    record.object.name.as_deref().unwrap_or("event")
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: record.object,
            reason: Some(record.reason.into()),
            message: Some(record.message),
            type_: Some(record.type_.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(component.into()),
                host: None,
            }),
            reporting_component: Some(component.into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                seen.insert(key, (ns, created.name_any(), 1));
            }
            Err(e) => tracing::debug!(error = %e, "recording an event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spam_filter_allows_a_burst_then_refills_slowly() {
        let mut bucket = Bucket {
            tokens: BURST,
            at: Instant::now(),
        };
        let allowed = (0..100).filter(|_| bucket.take()).count();
        assert_eq!(allowed, 25);
        bucket.at -= REFILL_EVERY;
        assert!(bucket.take());
        assert!(!bucket.take());
    }
}
