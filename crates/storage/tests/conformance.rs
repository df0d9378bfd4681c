//! One conformance suite for the `Store` contract, run against every backend: the
//! embedded store in a temporary directory and a real etcd started on a free loopback port
//! (Debian's etcd-server must be installed). Each test gets a fresh store.

#![allow(clippy::unwrap_used)] // test assertions

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_storage::embedded::{Config, Embedded};
use skiff_storage::etcd::EtcdStore;
use skiff_storage::etcd::local::LocalEtcd;
use skiff_storage::{Error, Event, EventKind, KeyRange, MAX_VALUE_BYTES, Store, WatchStream};

/// A store under test and whatever must live as long as it.
struct Backend {
    store: Box<dyn Store>,
    _guard: Box<dyn std::any::Any>,
}

async fn embedded() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(dir.path());
    config.compaction_interval = None;
    let store = Embedded::open(&config).expect("open embedded store");
    Backend {
        store: Box::new(store),
        _guard: Box::new(dir),
    }
}

async fn etcd() -> Backend {
    let etcd = LocalEtcd::start().await.expect("start etcd");
    let store = EtcdStore::connect(&etcd.config("/skiff-test"))
        .await
        .expect("connect to etcd");
    Backend {
        store: Box::new(store),
        _guard: Box::new(etcd),
    }
}

fn v(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} events", out.len()))
            .expect("watch ended early");
        out.push(item.expect("watch error"));
    }
    out
}

/// Asserts that nothing more arrives for a short while.
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected watch item {item:?}");
    }
}

mod suite {
    use super::*;

    pub async fn revisions_increase_with_every_write(s: &dyn Store) {
        let r0 = s.current_revision().await.unwrap();
        let r1 = s.create(b"/a", v("1")).await.unwrap();
        let r2 = s.update(b"/a", v("2"), r1).await.unwrap();
        let r3 = s.create(b"/b", v("1")).await.unwrap();
        let (r4, prev) = s.delete(b"/a", None).await.unwrap();
        assert!(
            r0 < r1 && r1 < r2 && r2 < r3 && r3 < r4,
            "{r0} {r1} {r2} {r3} {r4}"
        );
        assert_eq!(s.current_revision().await.unwrap(), r4);
        assert_eq!(prev.value, v("2"));
        assert_eq!(prev.mod_revision, r2);
    }

    pub async fn key_metadata_tracks_creation_and_versions(s: &dyn Store) {
        let r1 = s.create(b"/k", v("a")).await.unwrap();
        let r2 = s.update(b"/k", v("b"), r1).await.unwrap();
        let kv = s.get(b"/k", None).await.unwrap().unwrap();
        assert_eq!(kv.key, b"/k");
        assert_eq!(kv.value, v("b"));
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (r1, r2, 2)
        );
        s.delete(b"/k", Some(r2)).await.unwrap();
        let r4 = s.create(b"/k", v("c")).await.unwrap();
        let kv = s.get(b"/k", None).await.unwrap().unwrap();
        assert_eq!(
            (kv.create_revision, kv.version),
            (r4, 1),
            "recreated key starts over"
        );
    }

    pub async fn create_refuses_an_existing_key(s: &dyn Store) {
        s.create(b"/k", v("1")).await.unwrap();
        let before = s.current_revision().await.unwrap();
        assert!(matches!(
            s.create(b"/k", v("2")).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert_eq!(s.get(b"/k", None).await.unwrap().unwrap().value, v("1"));
        assert_eq!(
            s.current_revision().await.unwrap(),
            before,
            "a failed write is no revision"
        );
    }

    pub async fn stale_update_conflicts_and_returns_the_current_value(s: &dyn Store) {
        let r1 = s.create(b"/k", v("1")).await.unwrap();
        let r2 = s.update(b"/k", v("2"), r1).await.unwrap();
        match s.update(b"/k", v("3"), r1).await {
            Err(Error::Conflict {
                current: Some(current),
                expected,
                ..
            }) => {
                assert_eq!(expected, r1);
                assert_eq!(current.value, v("2"));
                assert_eq!(current.mod_revision, r2);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(s.get(b"/k", None).await.unwrap().unwrap().value, v("2"));
    }

    pub async fn update_of_a_missing_key_conflicts_with_nothing(s: &dyn Store) {
        match s.update(b"/missing", v("x"), 5).await {
            Err(Error::Conflict { current: None, .. }) => {}
            other => panic!("expected a conflict without a current value, got {other:?}"),
        }
        assert!(s.get(b"/missing", None).await.unwrap().is_none());
    }

    pub async fn delete_checks_its_precondition(s: &dyn Store) {
        let r1 = s.create(b"/k", v("1")).await.unwrap();
        let r2 = s.update(b"/k", v("2"), r1).await.unwrap();
        assert!(matches!(
            s.delete(b"/k", Some(r1)).await,
            Err(Error::Conflict {
                current: Some(_),
                ..
            })
        ));
        let (_, prev) = s.delete(b"/k", Some(r2)).await.unwrap();
        assert_eq!(prev.value, v("2"));
        assert!(matches!(
            s.delete(b"/k", None).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            s.delete(b"/k", Some(r2)).await,
            Err(Error::NotFound { .. })
        ));
    }

    pub async fn reads_at_older_revisions_see_the_past(s: &dyn Store) {
        let before = s.current_revision().await.unwrap();
        let r1 = s.create(b"/p/a", v("a1")).await.unwrap();
        let r2 = s.create(b"/p/b", v("b1")).await.unwrap();
        let r3 = s.update(b"/p/a", v("a2"), r1).await.unwrap();
        let (r4, _) = s.delete(b"/p/b", None).await.unwrap();
        s.create(b"/p/c", v("c1")).await.unwrap();

        assert!(s.get(b"/p/a", Some(before)).await.unwrap().is_none());
        assert_eq!(
            s.get(b"/p/a", Some(r2)).await.unwrap().unwrap().value,
            v("a1")
        );
        assert_eq!(
            s.get(b"/p/a", Some(r3)).await.unwrap().unwrap().value,
            v("a2")
        );
        assert_eq!(
            s.get(b"/p/b", Some(r3)).await.unwrap().unwrap().value,
            v("b1")
        );
        assert!(s.get(b"/p/b", Some(r4)).await.unwrap().is_none());

        let at = |rev| async move {
            let res = s
                .range(&KeyRange::prefix("/p/"), Some(rev), None)
                .await
                .unwrap();
            assert_eq!(res.revision, rev);
            res.kvs
                .iter()
                .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            at(r2).await,
            vec![("/p/a".into(), v("a1")), ("/p/b".into(), v("b1"))]
        );
        assert_eq!(
            at(r3).await,
            vec![("/p/a".into(), v("a2")), ("/p/b".into(), v("b1"))]
        );
        assert_eq!(at(r4).await, vec![("/p/a".into(), v("a2"))]);
        let now = s.range(&KeyRange::prefix("/p/"), None, None).await.unwrap();
        assert_eq!(now.kvs.len(), 2);
        assert_eq!(now.revision, s.current_revision().await.unwrap());
        let kv = &s
            .range(&KeyRange::prefix("/p/a"), Some(r3), None)
            .await
            .unwrap()
            .kvs[0];
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (r1, r3, 2)
        );
    }

    pub async fn reads_at_a_future_revision_fail(s: &dyn Store) {
        s.create(b"/k", v("1")).await.unwrap();
        let now = s.current_revision().await.unwrap();
        assert!(matches!(
            s.get(b"/k", Some(now + 10)).await,
            Err(Error::FutureRevision { .. })
        ));
        assert!(matches!(
            s.range(&KeyRange::all(), Some(now + 10), None).await,
            Err(Error::FutureRevision { .. })
        ));
    }

    pub async fn range_pages_consistently_with_limit_and_continue(s: &dyn Store) {
        for i in 0..25 {
            s.create(format!("/page/{i:03}").as_bytes(), v("x"))
                .await
                .unwrap();
        }
        s.create(b"/pagf", v("outside")).await.unwrap();
        let range = KeyRange::prefix("/page/");
        let first = s.range(&range, None, Some(10)).await.unwrap();
        assert_eq!(first.kvs.len(), 10);
        assert!(first.more);
        // Writes between pages must not show up in later pages read at the same revision.
        s.create(b"/page/005a", v("late")).await.unwrap();
        s.delete(b"/page/020", None).await.unwrap();
        let mut keys: Vec<Vec<u8>> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
        let mut next = first.next_page(&range);
        while let Some(page_range) = next {
            let page = s
                .range(&page_range, Some(first.revision), Some(10))
                .await
                .unwrap();
            assert_eq!(page.revision, first.revision);
            keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
            next = page.next_page(&page_range);
        }
        let expected: Vec<Vec<u8>> = (0..25)
            .map(|i| format!("/page/{i:03}").into_bytes())
            .collect();
        assert_eq!(keys, expected);
        let exact = s.range(&range, None, Some(26)).await.unwrap();
        assert_eq!(exact.kvs.len(), 25, "one created, one deleted since");
        assert!(!exact.more);
    }

    pub async fn many_keys_are_listed_in_order(s: &dyn Store) {
        let n = 10_000;
        let writes = futures::stream::iter(0..n)
            .map(|i| async move {
                s.create(format!("/many/{i:05}").as_bytes(), v("value"))
                    .await
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        assert!(writes.iter().all(|r| r.is_ok()));
        let all = s
            .range(&KeyRange::prefix("/many/"), None, None)
            .await
            .unwrap();
        assert_eq!(all.kvs.len(), n);
        assert!(!all.more);
        assert!(all.kvs.windows(2).all(|w| w[0].key < w[1].key));
        let page = s
            .range(&KeyRange::prefix("/many/"), None, Some(500))
            .await
            .unwrap();
        assert_eq!(page.kvs.len(), 500);
        assert_eq!(page.kvs[499].key, b"/many/00499");
    }

    pub async fn large_values_round_trip_and_oversized_ones_are_refused(s: &dyn Store) {
        let big: Bytes = (0..MAX_VALUE_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let mut live = s.watch(&KeyRange::key("/big"), 0).await.unwrap();
        let rev = s.create(b"/big", big.clone()).await.unwrap();
        let seen = next_events(&mut live, 1).await;
        assert_eq!(seen[0].revision(), rev);
        assert_eq!(
            seen[0].kv.value, big,
            "a live watcher gets large values too"
        );
        assert_eq!(s.get(b"/big", None).await.unwrap().unwrap().value, big);
        let mut watch = s.watch(&KeyRange::key("/big"), rev).await.unwrap();
        assert_eq!(next_events(&mut watch, 1).await[0].kv.value, big);
        let too_big = Bytes::from(vec![0u8; MAX_VALUE_BYTES + 1]);
        assert!(matches!(
            s.update(b"/big", too_big, rev).await,
            Err(Error::ValueTooLarge { size, limit }) if size == MAX_VALUE_BYTES + 1 && limit == MAX_VALUE_BYTES
        ));
        assert_eq!(
            s.get(b"/big", None).await.unwrap().unwrap().mod_revision,
            rev
        );
    }

    pub async fn bad_keys_are_refused(s: &dyn Store) {
        assert!(matches!(
            s.create(b"", v("x")).await,
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(
            s.create(&vec![b'k'; 5000], v("x")).await,
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(
            s.delete(b"", None).await,
            Err(Error::InvalidKey(_))
        ));
    }

    pub async fn watch_reports_kinds_and_previous_values(s: &dyn Store) {
        let mut w = s.watch(&KeyRange::prefix("/w/"), 0).await.unwrap();
        let r1 = s.create(b"/w/a", v("1")).await.unwrap();
        let r2 = s.update(b"/w/a", v("2"), r1).await.unwrap();
        let (r3, _) = s.delete(b"/w/a", None).await.unwrap();
        let events = next_events(&mut w, 3).await;
        assert_eq!(events[0].kind, EventKind::Created);
        assert_eq!(events[0].kv.value, v("1"));
        assert_eq!(events[0].revision(), r1);
        assert!(events[0].prev.is_none());
        assert_eq!(events[1].kind, EventKind::Modified);
        assert_eq!(events[1].revision(), r2);
        assert_eq!(events[1].prev.as_ref().unwrap().value, v("1"));
        assert_eq!(events[2].kind, EventKind::Deleted);
        assert_eq!(events[2].revision(), r3);
        assert_eq!(events[2].kv.key, b"/w/a");
        assert_eq!(events[2].prev.as_ref().unwrap().value, v("2"));
    }

    pub async fn watch_sees_only_its_range(s: &dyn Store) {
        let mut w = s.watch(&KeyRange::prefix("/in/"), 0).await.unwrap();
        s.create(b"/in", v("no")).await.unwrap();
        s.create(b"/io/x", v("no")).await.unwrap();
        s.create(b"/in/x", v("yes")).await.unwrap();
        let events = next_events(&mut w, 1).await;
        assert_eq!(events[0].kv.key, b"/in/x");
        assert_quiet(&mut w).await;
    }

    pub async fn watch_from_now_skips_the_past(s: &dyn Store) {
        s.create(b"/old", v("1")).await.unwrap();
        let mut w = s.watch(&KeyRange::all(), 0).await.unwrap();
        s.create(b"/new", v("1")).await.unwrap();
        let events = next_events(&mut w, 1).await;
        assert_eq!(events[0].kv.key, b"/new");
    }

    pub async fn watch_from_an_old_revision_replays_history_then_follows(s: &dyn Store) {
        let r1 = s.create(b"/h/a", v("1")).await.unwrap();
        let r2 = s.update(b"/h/a", v("2"), r1).await.unwrap();
        s.create(b"/h/b", v("1")).await.unwrap();
        let mut w = s.watch(&KeyRange::prefix("/h/"), r2).await.unwrap();
        s.delete(b"/h/a", None).await.unwrap();
        let events = next_events(&mut w, 3).await;
        let summary: Vec<_> = events.iter().map(|e| (e.kind, e.kv.key.clone())).collect();
        assert_eq!(
            summary,
            vec![
                (EventKind::Modified, b"/h/a".to_vec()),
                (EventKind::Created, b"/h/b".to_vec()),
                (EventKind::Deleted, b"/h/a".to_vec()),
            ]
        );
        assert_eq!(events[0].revision(), r2);
        assert_eq!(events[0].prev.as_ref().unwrap().value, v("1"));
    }

    pub async fn watch_delivers_every_event_once_in_order_under_concurrent_writers(s: &dyn Store) {
        let start = s.current_revision().await.unwrap() + 1;
        let mut live = s.watch(&KeyRange::prefix("/c/"), 0).await.unwrap();
        let (writers, per_writer) = (8, 40);
        let results = futures::future::join_all((0..writers).map(|w| async move {
            let key = format!("/c/{w}");
            let mut rev = s.create(key.as_bytes(), v("0")).await.unwrap();
            for i in 1..per_writer {
                rev = s
                    .update(key.as_bytes(), v(&i.to_string()), rev)
                    .await
                    .unwrap();
            }
        }))
        .await;
        assert_eq!(results.len(), writers);
        let total = writers * per_writer;
        let mut replay = s.watch(&KeyRange::prefix("/c/"), start).await.unwrap();
        for stream in [&mut live, &mut replay] {
            let events = next_events(stream, total).await;
            assert!(
                events.windows(2).all(|w| w[0].revision() < w[1].revision()),
                "in order, no duplicates"
            );
            for w in 0..writers {
                let key = format!("/c/{w}").into_bytes();
                let values: Vec<Bytes> = events
                    .iter()
                    .filter(|e| e.kv.key == key)
                    .map(|e| e.kv.value.clone())
                    .collect();
                let expected: Vec<Bytes> = (0..per_writer).map(|i| v(&i.to_string())).collect();
                assert_eq!(values, expected, "every write of writer {w}, in its order");
            }
            assert_quiet(stream).await;
        }
    }

    pub async fn compaction_forgets_history_and_says_so(s: &dyn Store) {
        let r1 = s.create(b"/k", v("1")).await.unwrap();
        let r2 = s.update(b"/k", v("2"), r1).await.unwrap();
        let r3 = s.update(b"/k", v("3"), r2).await.unwrap();
        let r4 = s.create(b"/other", v("1")).await.unwrap();
        s.compact(r3).await.unwrap();
        assert_eq!(s.compacted_revision().await.unwrap(), r3);
        match s.get(b"/k", Some(r2)).await {
            Err(Error::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!(requested, r2);
                assert_eq!(compacted, r3);
            }
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(matches!(
            s.range(&KeyRange::all(), Some(r1), None).await,
            Err(Error::Compacted { .. })
        ));
        assert_eq!(s.get(b"/k", Some(r3)).await.unwrap().unwrap().value, v("3"));
        assert_eq!(s.get(b"/k", None).await.unwrap().unwrap().value, v("3"));
        assert_eq!(
            s.range(&KeyRange::all(), Some(r3), None)
                .await
                .unwrap()
                .kvs
                .len(),
            1
        );
        assert_eq!(
            s.range(&KeyRange::all(), Some(r4), None)
                .await
                .unwrap()
                .kvs
                .len(),
            2
        );

        // A watch from below the floor fails, at once or as its first item.
        match s.watch(&KeyRange::all(), r2).await {
            Err(Error::Compacted { .. }) => {}
            Ok(mut w) => {
                let item = tokio::time::timeout(Duration::from_secs(10), w.next())
                    .await
                    .unwrap();
                assert!(
                    matches!(item, Some(Err(Error::Compacted { .. }))),
                    "got {item:?}"
                );
                assert!(w.next().await.is_none(), "the stream ends after the error");
            }
            Err(other) => panic!("expected Compacted, got {other:?}"),
        }
        // From the floor on, history is still there.
        let mut w = s.watch(&KeyRange::all(), r3).await.unwrap();
        let events = next_events(&mut w, 2).await;
        assert_eq!(events[0].revision(), r3);
        assert_eq!(events[1].revision(), r4);

        s.compact(r2).await.unwrap();
        assert_eq!(
            s.compacted_revision().await.unwrap(),
            r3,
            "compacting lower is a no-op"
        );
        let now = s.current_revision().await.unwrap();
        assert!(matches!(
            s.compact(now + 5).await,
            Err(Error::FutureRevision { .. })
        ));
    }

    pub async fn deleted_keys_stay_deleted_after_compaction(s: &dyn Store) {
        let r1 = s.create(b"/d/a", v("1")).await.unwrap();
        s.update(b"/d/a", v("2"), r1).await.unwrap();
        let (r3, _) = s.delete(b"/d/a", None).await.unwrap();
        let r4 = s.create(b"/d/b", v("1")).await.unwrap();
        s.compact(r4).await.unwrap();
        let later = s.create(b"/d/c", v("1")).await.unwrap();
        s.compact(later).await.unwrap();
        for rev in [None, Some(later)] {
            let keys: Vec<_> = s
                .range(&KeyRange::prefix("/d/"), rev, None)
                .await
                .unwrap()
                .kvs
                .into_iter()
                .map(|kv| kv.key)
                .collect();
            assert_eq!(keys, vec![b"/d/b".to_vec(), b"/d/c".to_vec()]);
        }
        assert!(s.get(b"/d/a", None).await.unwrap().is_none());
        assert!(r3 < r4);
        let r = s.create(b"/d/a", v("again")).await.unwrap();
        assert_eq!(
            s.get(b"/d/a", None).await.unwrap().unwrap().create_revision,
            r
        );
    }

    pub async fn health_is_ok(s: &dyn Store) {
        s.health().await.unwrap();
    }
}

macro_rules! conformance {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = super::$backend().await;
                    super::suite::$test(backend.store.as_ref()).await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($test:ident),* $(,)?) => {
        conformance!(embedded: $($test),*);
        conformance!(etcd: $($test),*);
    };
}

all_backends!(
    revisions_increase_with_every_write,
    key_metadata_tracks_creation_and_versions,
    create_refuses_an_existing_key,
    stale_update_conflicts_and_returns_the_current_value,
    update_of_a_missing_key_conflicts_with_nothing,
    delete_checks_its_precondition,
    reads_at_older_revisions_see_the_past,
    reads_at_a_future_revision_fail,
    range_pages_consistently_with_limit_and_continue,
    many_keys_are_listed_in_order,
    large_values_round_trip_and_oversized_ones_are_refused,
    bad_keys_are_refused,
    watch_reports_kinds_and_previous_values,
    watch_sees_only_its_range,
    watch_from_now_skips_the_past,
    watch_from_an_old_revision_replays_history_then_follows,
    watch_delivers_every_event_once_in_order_under_concurrent_writers,
    compaction_forgets_history_and_says_so,
    deleted_keys_stay_deleted_after_compaction,
    health_is_ok,
);
