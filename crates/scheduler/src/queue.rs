//! The scheduling queue (upstream's `PriorityQueue`): pods waiting to be scheduled are
//! active (highest priority first, then oldest), backing off after a failed binding
//! (1 s doubling to 10 s), or unschedulable until a cluster event could make them fit
//! (a node added or changed, a pod gone), or at the latest after a minute.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    /// Being scheduled or bound right now.
    InFlight,
}

#[derive(Default)]
pub struct Queue {
    /// (priority, Reverse(sequence)) so the heap pops high priority, then FIFO.
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    state: HashMap<String, (Where, i32, u32)>,
    sequence: u64,
    /// The earliest time a backing-off or unschedulable pod becomes due: `pop` looks
    /// through them only then, not on every call.
    next_scan: Option<Instant>,
}

impl Queue {
    /// A pending pod seen (again) by the watch.
    pub fn add(&mut self, key: &str, priority: i32) {
        match self.state.get(key) {
            Some((Where::Active | Where::InFlight | Where::Backoff(_), ..)) => {}
            Some((Where::Unschedulable(_), _, attempts)) => {
                // An update of the pod itself may make it fit.
                let attempts = *attempts;
                self.activate(key, priority, attempts);
            }
            None => self.activate(key, priority, 0),
        }
    }

    fn activate(&mut self, key: &str, priority: i32, attempts: u32) {
        self.sequence += 1;
        self.active
            .push((priority, Reverse(self.sequence), key.to_string()));
        self.state
            .insert(key.to_string(), (Where::Active, priority, attempts));
    }

    /// The pod is bound or gone: nothing more to do for it.
    pub fn forget(&mut self, key: &str) {
        self.state.remove(key);
    }

    /// The next pod to schedule, after moving due backoffs and stale unschedulables.
    pub fn pop(&mut self, now: Instant) -> Option<String> {
        if self.next_scan.is_some_and(|at| at <= now) {
            self.activate_due(now);
        }
        while let Some((_, _, key)) = self.active.pop() {
            if let Some(entry) = self.state.get_mut(&key)
                && entry.0 == Where::Active
            {
                entry.0 = Where::InFlight;
                return Some(key);
            }
        }
        None
    }

    /// Moves due backoffs and stale unschedulables to active, and finds the next time.
    fn activate_due(&mut self, now: Instant) {
        let due: Vec<(String, i32, u32)> = self
            .state
            .iter()
            .filter_map(|(k, (w, p, a))| match w {
                Where::Backoff(at) if *at <= now => Some((k.clone(), *p, *a)),
                Where::Unschedulable(since)
                    if now.duration_since(*since) >= UNSCHEDULABLE_FLUSH =>
                {
                    Some((k.clone(), *p, *a))
                }
                _ => None,
            })
            .collect();
        for (key, priority, attempts) in due {
            self.activate(&key, priority, attempts);
        }
        self.next_scan = self
            .state
            .values()
            .filter_map(|(w, ..)| match w {
                Where::Backoff(at) => Some(*at),
                Where::Unschedulable(since) => Some(*since + UNSCHEDULABLE_FLUSH),
                _ => None,
            })
            .min();
    }

    /// When a waiting pod next becomes due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_scan
    }

    fn due_at(&mut self, at: Instant) {
        self.next_scan = Some(self.next_scan.map_or(at, |n| n.min(at)));
    }

    /// No node fits: wait for a cluster event.
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        if let Some(entry) = self.state.get_mut(key) {
            entry.0 = Where::Unschedulable(now);
            entry.2 += 1;
            self.due_at(now + UNSCHEDULABLE_FLUSH);
        }
    }

    /// Binding failed: try again after a growing delay.
    pub fn backoff(&mut self, key: &str, now: Instant) {
        if let Some(entry) = self.state.get_mut(key) {
            entry.2 += 1;
            let delay = INITIAL_BACKOFF
                .saturating_mul(1 << entry.2.min(8).saturating_sub(1))
                .min(MAX_BACKOFF);
            entry.0 = Where::Backoff(now + delay);
            self.due_at(now + delay);
        }
    }

    /// A cluster event that could make unschedulable pods fit.
    pub fn move_unschedulable(&mut self) {
        let waiting: Vec<(String, i32, u32)> = self
            .state
            .iter()
            .filter(|(_, (w, ..))| matches!(w, Where::Unschedulable(_)))
            .map(|(k, (_, p, a))| (k.clone(), *p, *a))
            .collect();
        for (key, priority, attempts) in waiting {
            self.activate(&key, priority, attempts);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo_and_unschedulable_pods_wait_for_events() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.add("a", 0);
        q.add("b", 10);
        q.add("c", 0);
        q.add("a", 0);
        assert_eq!(q.pop(now).as_deref(), Some("b"));
        assert_eq!(q.pop(now).as_deref(), Some("a"));
        q.unschedulable("a", now);
        assert_eq!(q.pop(now).as_deref(), Some("c"));
        assert_eq!(q.pop(now), None);
        q.move_unschedulable();
        assert_eq!(q.pop(now).as_deref(), Some("a"));
        q.backoff("a", now);
        assert_eq!(q.pop(now), None);
        assert!(q.next_due().is_some_and(|d| d > now));
        assert_eq!(q.pop(now + MAX_BACKOFF).as_deref(), Some("a"));
        q.forget("a");
        assert_eq!(q.len(), 2);
    }
}
