//! A work queue of object keys: each key is queued once however often it is added, a key
//! being worked on is not handed out twice, and keys can come back after a delay.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    busy: HashSet<String>,
    /// Added while busy: queue again when done.
    dirty: HashSet<String>,
}

#[derive(Clone, Default)]
pub struct WorkQueue {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

impl WorkQueue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: &str) {
        let mut inner = self.lock();
        if inner.busy.contains(key) {
            inner.dirty.insert(key.to_string());
            return;
        }
        if inner.queued.insert(key.to_string()) {
            inner.queue.push_back(key.to_string());
            drop(inner);
            self.notify.notify_one();
        }
    }

    pub fn add_after(&self, key: &str, delay: Duration) {
        let queue = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&key);
        });
    }

    /// The next key; waits for one.
    pub async fn next(&self) -> String {
        loop {
            {
                let mut inner = self.lock();
                if let Some(key) = inner.queue.pop_front() {
                    inner.queued.remove(&key);
                    inner.busy.insert(key.clone());
                    return key;
                }
            }
            self.notify.notified().await;
        }
    }

    pub fn done(&self, key: &str) {
        let again = {
            let mut inner = self.lock();
            inner.busy.remove(key);
            inner.dirty.remove(key)
        };
        if again {
            self.add(key);
        }
    }
}

/// A controller's worker tasks: aborted when the controller stops (its future is
/// dropped when leadership is lost), so no worker keeps writing from a stale cache.
#[derive(Default)]
pub struct Workers(Vec<tokio::task::JoinHandle<()>>);

impl Workers {
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task));
    }

    /// `count` workers taking keys off `queue` and syncing them; a sync says when to
    /// look at the key again, and a failed one is retried after a second.
    pub fn sync_loop<F, Fut>(
        &mut self,
        count: usize,
        queue: &WorkQueue,
        what: &'static str,
        sync: F,
    ) where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Duration>, kube::Error>> + Send,
    {
        for _ in 0..count {
            let (queue, sync) = (queue.clone(), sync.clone());
            self.spawn(async move {
                loop {
                    let key = queue.next().await;
                    match sync(key.clone()).await {
                        Ok(Some(again)) => queue.add_after(&key, again),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(controller = what, key = %key, error = %e, "sync failed; retrying");
                            queue.add_after(&key, Duration::from_secs(1));
                        }
                    }
                    queue.done(&key);
                }
            });
        }
    }
}

/// Every object of kind `K`, kept in `writer`'s store; yields each object as it changes.
pub fn reflect<K>(
    client: &kube::Client,
    writer: kube::runtime::reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    kube::runtime::reflector::reflector(
        writer,
        kube::runtime::watcher::watcher(
            kube::Api::<K>::all(client.clone()),
            kube::runtime::watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects()
}

impl Drop for Workers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_requeued_when_added_while_busy() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.next().await, "a");
        q.add("a");
        assert_eq!(q.next().await, "b");
        q.done("a");
        assert_eq!(q.next().await, "a");
    }
}
