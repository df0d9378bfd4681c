//! Watches on the embedded store: replay from the log, then follow live commits.
//!
//! The committer publishes each commit's events on a broadcast channel after the commit
//! is durable. A watcher subscribes and notes the current revision under one lock, so
//! every revision is either at or below that mark (read from the log on disk) or above
//! it (delivered live); it skips anything below the next revision it owes, which makes
//! delivery exactly once and in order. A watcher that falls behind the channel's buffer
//! is not dropped: it re-subscribes and catches up from the log, so slow watchers never
//! hold back the writer or fast watchers. A large commit is announced by its revision
//! alone and read from the log, so the buffer's memory stays bounded whatever is written.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::{Shared, read};
use crate::{Error, Event, KeyRange, Result, Revision, WatchStream};

/// Commits buffered for live watchers before a slow one must catch up from disk.
const LIVE_BUFFER_COMMITS: usize = 256;
/// A commit whose events are larger than this is announced, not carried: at most
/// `LIVE_BUFFER_COMMITS` x this (64 MiB) is ever buffered.
const LIVE_COMMIT_BYTES: usize = 256 << 10;

/// What the broadcast carries for one commit.
#[derive(Clone)]
enum Live {
    Events(Arc<[Event]>),
    /// Read the commit up to this revision from the log.
    Announce(Revision),
}
/// Log entries read from disk per catch-up step.
const REPLAY_CHUNK: usize = 1024;

pub(crate) struct Hub {
    /// The revision of the last published commit; the lock orders subscribe vs publish.
    current: Mutex<Revision>,
    tx: broadcast::Sender<Live>,
}

impl Hub {
    pub(crate) fn new(current: Revision) -> Self {
        Hub {
            current: Mutex::new(current),
            tx: broadcast::channel(LIVE_BUFFER_COMMITS).0,
        }
    }

    pub(crate) fn current(&self) -> Revision {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn publish(&self, events: Vec<Event>, revision: Revision) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = revision;
        let bytes: usize = events
            .iter()
            .map(|e| {
                e.kv.key.len() + e.kv.value.len() + e.prev.as_ref().map_or(0, |p| p.value.len())
            })
            .sum();
        let live = if bytes > LIVE_COMMIT_BYTES {
            Live::Announce(revision)
        } else {
            Live::Events(events.into())
        };
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(live);
    }

    fn subscribe(&self) -> (Revision, broadcast::Receiver<Live>) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (*current, self.tx.subscribe())
    }
}

struct Watcher {
    shared: Arc<Shared>,
    range: KeyRange,
    /// The revision of the next event owed to the consumer.
    next: Revision,
    /// Revisions up to here come from the log, above it from `rx`.
    replay_until: Revision,
    rx: broadcast::Receiver<Live>,
    ready: VecDeque<Event>,
    done: bool,
}

pub(crate) fn start(shared: Arc<Shared>, range: KeyRange, start: Revision) -> Result<WatchStream> {
    let (current, rx) = shared.hub.subscribe();
    let compacted = shared.compacted();
    let next = if start <= 0 { current + 1 } else { start };
    if next < compacted {
        return Err(Error::Compacted {
            requested: next,
            compacted,
        });
    }
    let watcher = Watcher {
        shared,
        range,
        next,
        replay_until: current,
        rx,
        ready: VecDeque::new(),
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        watcher,
        |mut w| async move {
            let item = w.next_event().await?;
            if item.is_err() {
                w.done = true;
            }
            Some((item, w))
        },
    )))
}

impl Watcher {
    async fn next_event(&mut self) -> Option<Result<Event>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.next <= self.replay_until {
                if let Err(e) = self.replay().await {
                    return Some(Err(e));
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(Live::Announce(revision)) => {
                    self.replay_until = self.replay_until.max(revision);
                }
                Ok(Live::Events(batch)) => {
                    for event in batch.iter() {
                        if event.revision() >= self.next {
                            self.next = event.revision() + 1;
                            if self.range.contains(&event.kv.key) {
                                self.ready.push_back(event.clone());
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live buffer: catch up from disk instead.
                    let (current, rx) = self.shared.hub.subscribe();
                    self.rx = rx;
                    self.replay_until = current;
                }
                Err(broadcast::error::RecvError::Closed) => return Some(Err(Error::Closed)),
            }
        }
    }

    /// Reads the next chunk of `[next, replay_until]` from the log.
    async fn replay(&mut self) -> Result<()> {
        let shared = self.shared.clone();
        let range = self.range.clone();
        let (from, to) = (self.next, self.replay_until);
        let (events, next) = tokio::task::spawn_blocking(move || {
            let txn = shared.begin_read()?;
            read::events(&txn, &range, from, to, REPLAY_CHUNK)
        })
        .await
        .map_err(|e| Error::embedded("replaying the log", e))??;
        self.ready.extend(events);
        self.next = next;
        Ok(())
    }
}
