//! The values that cross the [`crate::Store`] trait.

use bytes::Bytes;
use futures::stream::BoxStream;

/// A global, strictly increasing write counter (etcd's revision, Kubernetes'
/// resourceVersion). `i64` as in etcd's wire format.
pub type Revision = i64;

/// The largest value a backend accepts: etcd's default request limit, which upstream
/// Kubernetes objects live within.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// The largest key a backend accepts.
pub const MAX_KEY_BYTES: usize = 4096;

/// One key and its value at some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the write that produced this value.
    pub mod_revision: Revision,
    /// Number of writes since creation: 1 for a new key.
    pub version: i64,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Modified,
    Deleted,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The key after the change. For a deletion: the key with an empty value and
    /// `mod_revision` set to the deletion's revision.
    pub kv: KeyValue,
    /// The key before the change, when it existed and its history is still kept.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision of the write behind this event.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The result of [`crate::Store::range`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys follow the last one returned (the limit cut the answer).
    pub more: bool,
    /// The revision the range was read at: pass it to the next page.
    pub revision: Revision,
}

impl RangeResponse {
    /// The range to ask for the next page, if there is one.
    pub fn next_page(&self, range: &KeyRange) -> Option<KeyRange> {
        match (self.more, self.kvs.last()) {
            (true, Some(last)) => Some(range.continue_after(&last.key)),
            _ => None,
        }
    }
}

/// A half-open key interval `[start, end)`; `end == None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        KeyRange { start, end }
    }

    /// Exactly one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        let start = key.into();
        let mut end = start.clone();
        end.push(0);
        KeyRange {
            start,
            end: Some(end),
        }
    }

    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            start: Vec::new(),
            end: None,
        }
    }

    /// The same range, starting just after `key` (a continue token).
    pub fn continue_after(&self, key: &[u8]) -> Self {
        let mut start = key.to_vec();
        start.push(0);
        KeyRange {
            start,
            end: self.end.clone(),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// The smallest key greater than every key with this prefix (`None`: no such key, the
/// prefix is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The events of a watch, in revision order. An `Err` item ends the stream.
pub type WatchStream = BoxStream<'static, crate::Result<Event>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        let r = KeyRange::prefix("/registry/pods/");
        assert!(r.contains(b"/registry/pods/default/a"));
        assert!(!r.contains(b"/registry/pods"));
        assert!(!r.contains(b"/registry/pods0"));
        assert_eq!(r.end.as_deref(), Some(&b"/registry/pods0"[..]));
    }

    #[test]
    fn prefix_of_ff_bytes_is_unbounded_above() {
        let r = KeyRange::prefix(vec![b'a', 0xff, 0xff]);
        assert_eq!(r.end, Some(vec![b'b']));
        assert_eq!(KeyRange::prefix(vec![0xff]).end, None);
    }

    #[test]
    fn continue_after_skips_the_key_itself() {
        let r = KeyRange::prefix("k").continue_after(b"k1");
        assert!(!r.contains(b"k1"));
        assert!(r.contains(b"k1\0"));
        assert!(r.contains(b"k2"));
    }

    #[test]
    fn single_key_range_contains_only_that_key() {
        let r = KeyRange::key("a");
        assert!(r.contains(b"a"));
        assert!(!r.contains(b"a\0"));
        assert!(!r.contains(b"b"));
    }
}
