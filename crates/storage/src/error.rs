//! One error type for both backends, so the API server maps each case to a Kubernetes
//! `Status` in one place (Compacted -> 410 Gone, Conflict -> 409, ...).

use crate::types::{KeyValue, Revision};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("revision {requested} has been compacted (history starts at {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("key {} already exists", String::from_utf8_lossy(.key))]
    AlreadyExists { key: Vec<u8> },
    #[error("key {} not found", String::from_utf8_lossy(.key))]
    NotFound { key: Vec<u8> },
    /// A compare-and-swap lost: the key changed since `expected`. `current` is its value
    /// now (`None`: the key does not exist).
    #[error("key {} was modified (expected revision {expected})", String::from_utf8_lossy(.key))]
    Conflict {
        key: Vec<u8>,
        expected: Revision,
        current: Option<Box<KeyValue>>,
    },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("value is {size} bytes, the limit is {limit}")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("invalid range: {0}")]
    InvalidRange(String),
    /// The watch consumer fell too far behind; restart from the last revision seen.
    #[error("watch fell behind and was cancelled at revision {next}")]
    WatchLagged { next: Revision },
    #[error("opening the store at {path}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("embedded store: {context}")]
    Embedded {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("etcd: {context}")]
    Etcd {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the store is shut down")]
    Closed,
    /// A layer above a backend (encryption at rest) could not transform a value.
    #[error("transforming a stored value: {context}")]
    Transform { context: &'static str },
}

impl Error {
    pub(crate) fn embedded(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Embedded {
            context,
            source: source.into(),
        }
    }

    pub(crate) fn etcd(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Etcd {
            context,
            source: source.into(),
        }
    }
}
