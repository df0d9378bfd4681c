//! Watch: a stream of `{"type": ..., "object": ...}` lines, one per change, from a
//! resourceVersion on, served by the watch cache (`watch_cache.rs`) unless the
//! resourceVersion is older than its window. Without one (or with "0") the current objects come first as
//! ADDED events, as upstream does. A selector turns changes into ADDED or DELETED when an
//! object starts or stops matching. A resourceVersion older than the datastore keeps
//! yields one ERROR event with a 410 Expired Status, so clients relist.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use skiff_storage::{Event, EventKind, KeyRange, Revision};
use tokio::sync::mpsc;

use super::Resource;
use super::object::{decode, set_resource_version};
use super::store::{ListOptions, Registry};
use super::watch_cache::From;

use crate::status::ApiError;

/// Changes for one watch, from the watch cache or the datastore.
type Events = BoxStream<'static, skiff_storage::Result<Arc<Event>>>;

fn matches(opts: &ListOptions, obj: &Value) -> bool {
    opts.label_selector
        .matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
        && opts.field_selector.matches(obj)
}

pub(crate) struct WatchOptions {
    pub list: ListOptions,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Send each object as a one-row Table (`kubectl get -w`).
    pub table: Option<crate::table::IncludeObject>,
    /// `sendInitialEvents`: `true` streams the current objects, then a bookmark marking
    /// their end, then changes (a "streaming list"); `false` only changes.
    pub send_initial_events: Option<bool>,
}

/// Starts a watch; the receiver yields the encoded lines until the watch ends.
pub(crate) async fn start(
    registry: &Registry,
    r: &'static Resource,
    ns: Option<String>,
    opts: WatchOptions,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let (tx, rx) = mpsc::channel(256);
    let range = KeyRange::prefix(r.key_prefix(ns.as_deref()));
    let bad_rv = |rv: &str| ApiError::bad_request(format!("invalid resource version: \"{rv}\""));
    let rv = opts.list.resource_version.as_deref().unwrap_or("");
    let requested: Option<Revision> = match rv {
        "" | "0" => None,
        rv => match rv.parse::<Revision>() {
            // The watch starts at the next revision: the largest one has none.
            Ok(n) if (0..Revision::MAX).contains(&n) => Some(n),
            _ => return Err(bad_rv(rv)),
        },
    };
    // Where the watch starts, by upstream's rules: a streaming list or an unset
    // resourceVersion starts from a snapshot at least as new as the request (the
    // datastore's head when unset), "0" from the cache as it is, a resourceVersion from
    // the changes after it.
    let from = match (opts.send_initial_events, rv, requested) {
        (Some(false), _, Some(n)) => From::After(n),
        (Some(true), _, Some(n)) => From::AtLeast(n),
        (_, "0", _) => From::Cached,
        (None, _, Some(n)) => From::After(n),
        (_, _, None) => From::AtLeast(
            registry
                .store
                .current_revision()
                .await
                .map_err(|e| ApiError::from_store(e, &super::store::subject(r, "")))?,
        ),
    };
    let subscription = registry
        .cache
        .watch(&r.key_prefix(None), range.clone(), from)
        .await
        .map_err(|e| ApiError::from_store(e, &super::store::subject(r, "")))?;
    let mut initial = Vec::new();
    let mut initial_end = None;
    let (start, cached): (Revision, Option<Events>) = match subscription {
        Some(sub) => {
            let start = match sub.snapshot {
                // `sendInitialEvents=false`: changes only.
                Some(snapshot) if opts.send_initial_events == Some(false) => snapshot.revision + 1,
                Some(snapshot) => {
                    if opts.send_initial_events == Some(true) {
                        initial_end = Some(snapshot.revision);
                    }
                    let start = snapshot.revision + 1;
                    // Decoded one by one as they are sent.
                    initial = snapshot.kvs;
                    start
                }
                None => requested.unwrap_or(0) + 1,
            };
            let mut events = sub.events;
            let live = futures::stream::poll_fn(move |cx| events.poll_recv(cx)).map(Ok);
            let stream = futures::stream::iter(sub.backlog.into_iter().map(Ok))
                .chain(live)
                .boxed();
            (start, Some(stream))
        }
        // Older than the cache's window: the datastore's history, if it still has it.
        None => (requested.unwrap_or(0) + 1, None),
    };
    let store = registry.store.clone();
    let table = opts.table;
    tokio::spawn(async move {
        let send = |mut line: Value| {
            let tx = tx.clone();
            async move {
                if let Some(include) = table
                    && line["type"] != "ERROR"
                    && line["type"] != "BOOKMARK"
                {
                    line["object"] = crate::table::from_object(r, &line["object"], include);
                }
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                tx.send(Bytes::from(bytes)).await.is_ok()
            }
        };
        // Without selectors, a Table or a conversion, lines are written straight from
        // the stored bytes (resourceVersion spliced in): no parse, no encode per watcher.
        let raw = table.is_none()
            && r.from_storage.is_none()
            && opts.list.label_selector.is_empty()
            && opts.list.field_selector.is_empty();
        let send_raw = |bytes: Bytes| {
            let tx = tx.clone();
            async move { tx.send(bytes).await.is_ok() }
        };
        for kv in initial {
            if raw && let Some(line) = raw_line("ADDED", &kv.value, kv.mod_revision) {
                if !send_raw(line).await {
                    return;
                }
                continue;
            }
            let obj = match decode(r, &kv) {
                Ok(obj) => obj,
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e.message, "skipping an undecodable object");
                    continue;
                }
            };
            if !matches(&opts.list, &obj) {
                continue;
            }
            if !send(event_line("ADDED", obj)).await {
                return;
            }
        }
        if let Some(revision) = initial_end {
            let line = json!({"type": "BOOKMARK", "object": {
                "kind": r.kind, "apiVersion": r.api_version(),
                "metadata": {
                    "resourceVersion": revision.to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            }});
            if !send(line).await {
                return;
            }
        }
        let mut events = match cached {
            Some(events) => events,
            None => match store.watch(&range, start).await {
                Ok(events) => events.map(|e| e.map(Arc::new)).boxed(),
                Err(e) => {
                    let status = ApiError::from_store(e, &super::store::subject(r, "")).to_status();
                    send(json!({"type": "ERROR", "object": status})).await;
                    return;
                }
            },
        };
        let deadline = tokio::time::sleep(opts.timeout);
        tokio::pin!(deadline);
        let mut bookmark = tokio::time::interval(Duration::from_secs(30));
        bookmark.tick().await;
        let mut last = start - 1;
        loop {
            tokio::select! {
                event = events.next() => {
                    let event = match event {
                        Some(Ok(event)) => event,
                        Some(Err(e)) => {
                            let status = ApiError::from_store(e, &super::store::subject(r, "")).to_status();
                            send(json!({"type": "ERROR", "object": status})).await;
                            return;
                        }
                        None => return,
                    };
                    last = event.revision();
                    // The cache sends every change of the kind: those outside this
                    // watch's range only move its bookmarks on.
                    if !range.contains(&event.kv.key) {
                        continue;
                    }
                    if raw && let Some(line) = raw_event_line(&event) {
                        tokio::select! {
                            sent = send_raw(line) => if !sent { return },
                            () = &mut deadline => return,
                        }
                        continue;
                    }
                    if let Some(line) = to_line(r, &event, &opts.list) {
                        // A client that stops reading must not keep the watch past its
                        // timeout: the send races the deadline.
                        tokio::select! {
                            sent = send(line) => if !sent { return },
                            () = &mut deadline => return,
                        }
                    }
                }
                _ = bookmark.tick(), if opts.bookmarks => {
                    let line = json!({"type": "BOOKMARK", "object": {
                        "kind": r.kind, "apiVersion": r.api_version(),
                        "metadata": {"resourceVersion": last.to_string()},
                    }});
                    if !send(line).await {
                        return;
                    }
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            }
        }
    });
    Ok(rx)
}

/// A watch line made from stored bytes: `{"type":KIND,"object":OBJECT}` and a newline.
fn raw_line(kind: &str, stored: &[u8], revision: Revision) -> Option<Bytes> {
    let mut out = Vec::with_capacity(stored.len() + 64);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    if !super::list::splice_resource_version(stored, revision, &mut out) {
        return None;
    }
    out.extend_from_slice(b"}\n");
    Some(Bytes::from(out))
}

/// The line for a datastore event when nothing filters it; `None` when it needs the
/// general path (a deletion whose last value the datastore no longer has).
fn raw_event_line(event: &Event) -> Option<Bytes> {
    match event.kind {
        EventKind::Deleted => raw_line("DELETED", &event.prev.as_ref()?.value, event.revision()),
        EventKind::Modified => raw_line("MODIFIED", &event.kv.value, event.revision()),
        EventKind::Created => raw_line("ADDED", &event.kv.value, event.revision()),
    }
}

/// `{"type": ..., "object": ...}`, the object moved in (`json!` would copy it).
fn event_line(kind: &str, obj: Value) -> Value {
    let mut line = serde_json::Map::new();
    line.insert("type".into(), Value::String(kind.into()));
    line.insert("object".into(), obj);
    Value::Object(line)
}

/// A deleted object known only by its key `/registry/[GROUP/]PLURAL/[NS/]NAME`.
fn deleted_stub(r: &Resource, key: &[u8]) -> Value {
    let key = String::from_utf8_lossy(key);
    let mut parts = key.rsplit('/');
    let name = parts.next().unwrap_or_default();
    let mut metadata = json!({"name": name});
    if r.namespaced {
        metadata["namespace"] = json!(parts.next().unwrap_or_default());
    }
    json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": metadata})
}

/// The watch line for a datastore event, after selector filtering.
fn to_line(r: &Resource, event: &skiff_storage::Event, opts: &ListOptions) -> Option<Value> {
    let matches = |obj: &Value| matches(opts, obj);
    let new = match event.kind {
        EventKind::Deleted => None,
        _ => decode(r, &event.kv).ok(),
    };
    let old = match event.prev.as_ref().and_then(|p| decode(r, p).ok()) {
        // The datastore no longer has the deleted value (etcd drops it at the compaction
        // floor): say which object went, rather than nothing.
        None if event.kind == EventKind::Deleted => Some(deleted_stub(r, &event.kv.key)),
        old => old,
    };
    let (new_matches, old_matches) = (
        new.as_ref().is_some_and(matches),
        old.as_ref().is_some_and(matches),
    );
    let (kind, mut obj) = match (event.kind, old_matches, new_matches) {
        (EventKind::Deleted, true, _) => ("DELETED", old?),
        (EventKind::Deleted, false, _) if event.prev.is_none() => ("DELETED", old?),
        (EventKind::Deleted, false, _) => return None,
        (_, false, true) => ("ADDED", new?),
        (_, true, true) => ("MODIFIED", new?),
        // Stopped matching: upstream sends the old object, at the event's revision.
        (_, true, false) => ("DELETED", old?),
        (_, false, false) => return None,
    };
    set_resource_version(&mut obj, event.revision());
    Some(event_line(kind, obj))
}

#[cfg(test)]
mod tests {
    use skiff_storage::KeyValue;

    use super::*;

    fn kv(value: &str, revision: Revision) -> KeyValue {
        KeyValue {
            key: b"/registry/configmaps/default/a".to_vec(),
            value: Bytes::from(value.to_string()),
            create_revision: 2,
            mod_revision: revision,
            version: 1,
        }
    }

    #[test]
    fn unfiltered_events_are_written_from_the_stored_bytes() {
        let stored = r#"{"kind":"ConfigMap","metadata":{"name":"a"}}"#;
        let added = Event {
            kind: EventKind::Created,
            kv: kv(stored, 5),
            prev: None,
        };
        let line = raw_event_line(&added).expect("line");
        let parsed: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(parsed["type"], "ADDED");
        assert_eq!(parsed["object"]["metadata"]["resourceVersion"], "5");
        assert!(line.ends_with(b"\n"));
        let modified = Event {
            kind: EventKind::Modified,
            kv: kv(stored, 6),
            prev: Some(kv(stored, 5)),
        };
        let parsed: Value =
            serde_json::from_slice(&raw_event_line(&modified).expect("line")).expect("json");
        assert_eq!(parsed["type"], "MODIFIED");
        let deleted = Event {
            kind: EventKind::Deleted,
            kv: kv("", 7),
            prev: Some(kv(stored, 6)),
        };
        let parsed: Value =
            serde_json::from_slice(&raw_event_line(&deleted).expect("line")).expect("json");
        assert_eq!(
            (
                parsed["type"].as_str(),
                parsed["object"]["metadata"]["resourceVersion"].as_str()
            ),
            (Some("DELETED"), Some("7"))
        );
        // A deletion without the last value takes the general path.
        let gone = Event {
            kind: EventKind::Deleted,
            kv: kv("", 8),
            prev: None,
        };
        assert!(raw_event_line(&gone).is_none());
    }
}
