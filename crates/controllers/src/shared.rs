//! Shared informers: one watch of a kind for every controller that needs it, as
//! upstream's SharedInformerFactory. The API server sends each pod event once to the
//! controller manager instead of once per controller, and it is decoded once.
//!
//! The driver applies each event to the shared store and then hands the changed object
//! to every subscriber, so once the store has its first list a subscriber finds it at
//! least as new as the event (controllers open their queues only then, see
//! `queue::open_when_synced`). A subscriber that falls more than [`BUFFER`] events
//! behind gets every object in the store again; objects deleted while a watch
//! re-lists send no event, which the controllers' periodic resync covers.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::runtime::reflector::{self, Store};
use tokio::sync::broadcast;

use crate::queue::reflect;

/// Changed objects kept for slow subscribers before they resync.
const BUFFER: usize = 1 << 16;

/// One kind's store and its change feed.
pub(crate) struct Shared<K: kube::Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    tx: broadcast::Sender<Arc<K>>,
}

impl<K: kube::Resource<DynamicType = ()> + 'static> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared {
            store: self.store.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<K> Shared<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// The informer and the future that drives its watch (run it with the controllers).
    pub fn new(client: &kube::Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let (tx, _) = broadcast::channel(BUFFER);
        let events = reflect(client, writer);
        let sender = tx.clone();
        let driver = events.for_each(move |event| {
            match event {
                Ok(object) => {
                    let _ = sender.send(Arc::new(object));
                }
                Err(e) => tracing::warn!(error = %e, kind = %K::kind(&()), "shared watch"),
            }
            futures::future::ready(())
        });
        (Shared { store, tx }, driver)
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object as it changes (deleted ones included), from now on.
    pub fn subscribe(&self) -> BoxStream<'static, Arc<K>> {
        let rx = self.tx.subscribe();
        let store = self.store.clone();
        futures::stream::unfold(
            (rx, store, VecDeque::new()),
            |(mut rx, store, mut backlog)| async move {
                loop {
                    if let Some(object) = backlog.pop_front() {
                        return Some((object, (rx, store, backlog)));
                    }
                    match rx.recv().await {
                        Ok(object) => return Some((object, (rx, store, backlog))),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, kind = %K::kind(&()), "a controller fell behind; resyncing it");
                            backlog.extend(store.state());
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
        .boxed()
    }
}

/// Runs `pass` every `period` once `store` has its first list, logging failures: the
/// loop of the controllers that still work in periodic passes over the shared pods.
pub(crate) async fn passes_over<K, F, Fut>(
    store: &Store<K>,
    period: std::time::Duration,
    what: &'static str,
    pass: F,
) -> Result<(), crate::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), kube::Error>>,
{
    let _ = store.wait_until_ready().await;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = pass().await {
            tracing::warn!(error = %e, what, "periodic pass failed");
        }
    }
}
