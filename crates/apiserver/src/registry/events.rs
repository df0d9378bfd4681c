//! Events are stored once, in the core/v1 shape, and served as both core/v1 and
//! events.k8s.io/v1 (upstream converts between the two the same way): `regarding` is
//! `involvedObject`, `note` is `message`, the `deprecated*` fields are the old counters
//! and timestamps, `reportingController` is `reportingComponent`.

use serde_json::{Map, Value, json};

/// (events.k8s.io/v1 field, core/v1 field)
const RENAMES: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: Value, from_index: usize, api_version: &str) -> Value {
    let Value::Object(map) = obj else { return obj };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = RENAMES
            .iter()
            .find(|pair| {
                if from_index == 0 {
                    pair.0 == key
                } else {
                    pair.1 == key
                }
            })
            .map(|pair| if from_index == 0 { pair.1 } else { pair.0 });
        out.insert(renamed.unwrap_or(&key).to_string(), value);
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// events.k8s.io/v1 -> core/v1 (stored form).
pub(crate) fn to_core(obj: Value) -> Value {
    rename(obj, 0, "v1")
}

/// core/v1 (stored form) -> events.k8s.io/v1.
pub(crate) fn from_core(obj: Value) -> Value {
    rename(obj, 1, "events.k8s.io/v1")
}

/// When an event was last seen: the newest of its timestamps.
fn last_seen(event: &Value) -> Option<time::OffsetDateTime> {
    let parse = |pointer: &str| {
        event
            .pointer(pointer)
            .and_then(Value::as_str)
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
    };
    [
        "/lastTimestamp",
        "/eventTime",
        "/series/lastObservedTime",
        "/firstTimestamp",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .filter_map(|p| parse(p))
    .max()
}

impl super::store::Registry {
    /// Deletes events not seen for `ttl` (upstream's `--event-ttl`, done there with
    /// etcd leases). Returns how many went.
    pub(crate) async fn expire_events(
        &self,
        ttl: std::time::Duration,
    ) -> Result<usize, crate::status::ApiError> {
        self.expire_events_seen_before(time::OffsetDateTime::now_utc() - ttl)
            .await
    }

    /// Deletes events whose creation and every timestamp are before `cutoff` (so an
    /// event lives at least a TTL from when it was written, as with upstream's leases).
    async fn expire_events_seen_before(
        &self,
        cutoff: time::OffsetDateTime,
    ) -> Result<usize, crate::status::ApiError> {
        let events = super::builtin("", "v1", "events")?;
        let list = self
            .list(events, None, &super::store::ListOptions::default())
            .await?;
        let mut expired = 0;
        for event in list["items"].as_array().map_or(&[][..], Vec::as_slice) {
            if last_seen(event).is_none_or(|seen| seen >= cutoff) {
                continue;
            }
            let (Some(ns), Some(name)) = (
                event.pointer("/metadata/namespace").and_then(Value::as_str),
                event.pointer("/metadata/name").and_then(Value::as_str),
            ) else {
                continue;
            };
            // Only the version we judged: an event updated since stays.
            let options = super::delete::DeleteOptions {
                resource_version: event
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                ..Default::default()
            };
            match self.delete(events, Some(ns), name, &options).await {
                Ok(_) => expired += 1,
                Err(crate::status::ApiError {
                    code: 404 | 409, ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::WriteOptions;

    #[tokio::test]
    async fn events_expire_a_ttl_after_they_were_last_seen() {
        let (_dir, registry) = crate::registry::store::test_registry();
        registry
            .ensure_namespace("default")
            .await
            .expect("namespace");
        let events = crate::registry::find("", "v1", "events").expect("events");
        let event = json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "R",
                           "lastTimestamp": "2020-01-01T00:00:00Z"});
        registry
            .create(events, Some("default"), event, WriteOptions::default())
            .await
            .expect("create");
        let now = time::OffsetDateTime::now_utc();
        // Written just now: kept for a TTL even though its lastTimestamp is old.
        assert_eq!(
            registry
                .expire_events_seen_before(now - time::Duration::hours(1))
                .await
                .expect("sweep"),
            0
        );
        // Two hours on, it goes.
        assert_eq!(
            registry
                .expire_events_seen_before(now + time::Duration::hours(1))
                .await
                .expect("sweep"),
            1
        );
        assert!(registry.get(events, Some("default"), "e").await.is_err());
    }

    #[test]
    fn shapes_convert_both_ways() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started",
            "reportingController": "skiff/kubelet", "deprecatedCount": 2});
        let core = to_core(new.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["count"], 2);
        assert_eq!(core["reportingComponent"], "skiff/kubelet");
        assert_eq!(from_core(core), new);
    }
}
