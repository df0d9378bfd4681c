//! The etcd backend: the [`Store`] trait over a real etcd cluster's v3 gRPC API.
//!
//! Each conditional write is one etcd transaction (compare the key's create or mod
//! revision, then put or delete, else read the key back), the same shape kube-apiserver's
//! etcd3 store uses, so a conflict costs one round trip and returns the current value.
//! Works with etcd 3.4 (Debian's) and later; TLS with client certificates and several
//! endpoints are passed to the client, which balances across them.

pub mod local;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{
    Error, Event, EventKind, KeyRange, KeyValue, RangeResponse, Result, Revision, Store,
    WatchStream, check_write,
};

/// Responses may carry many large values (a LIST of a whole resource).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// Every key is stored under this prefix (kube-apiserver's `--etcd-prefix`), so several
    /// clusters or test runs can share one etcd.
    pub prefix: Vec<u8>,
    /// PEM CA bundle to verify the servers with.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// A [`Store`] backed by etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: Vec<u8>,
    /// Attempts per request: one per endpoint, plus one.
    attempts: usize,
}

/// How many more attempts a failed request gets, out of `budget` (one per endpoint plus
/// one). The client spreads requests over the endpoints at random and does not skip one
/// that is down, so a request can land on a dead endpoint several times in a row. One
/// that never left (connection refused) is always safe to send again, as etcd's clientv3
/// does, and costs nothing, so it gets ten times the budget; one that may have reached
/// the server is retried only if `idempotent`.
fn attempts_for(error: &etcd_client::Error, idempotent: bool, budget: usize) -> usize {
    match error {
        etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
            if status.message().contains("connect") {
                budget * 10
            } else if idempotent {
                budget
            } else {
                0
            }
        }
        etcd_client::Error::TransportError(_) if idempotent => budget,
        _ => 0,
    }
}

impl EtcdStore {
    pub async fn connect(config: &EtcdConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::etcd("connecting", "no etcd endpoints given"));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_keep_alive(
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(10),
            );
        if config.ca_file.is_some() || config.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_file(ca)?));
            }
            match (&config.cert_file, &config.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::etcd(
                        "configuring TLS",
                        "a client certificate needs both a certificate and a key file",
                    ));
                }
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| Error::etcd("connecting", e))?;
        Ok(EtcdStore {
            client,
            prefix: config.prefix.clone(),
            attempts: config.endpoints.len() + 1,
        })
    }

    /// Runs `request`, again on another endpoint when that is safe (see [`attempts_for`]).
    async fn retry<T, F, Fut>(
        &self,
        idempotent: bool,
        mut request: F,
    ) -> Result<T, etcd_client::Error>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 1;
        loop {
            match request(self.kv()).await {
                Err(e) if attempt < attempts_for(&e, idempotent, self.attempts) => {
                    tracing::debug!(error = %e, attempt, "retrying an etcd request");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// The etcd key range for one of ours: prefixed, and bounded by the prefix when ours
    /// is unbounded.
    fn full_range(&self, range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
        let start = self.full_key(&range.start);
        let end = match &range.end {
            Some(end) => self.full_key(end),
            // etcd spells "every key from start on" as the end key "\0".
            None => KeyRange::prefix(self.prefix.clone()).end.unwrap_or(vec![0]),
        };
        (start, end)
    }

    fn kv_from(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: kv
                .key()
                .strip_prefix(self.prefix.as_slice())
                .unwrap_or(kv.key())
                .to_vec(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        }
    }

    /// Turns etcd's errors for unreadable revisions into ours.
    async fn map_read_error(&self, e: etcd_client::Error, requested: Revision) -> Error {
        let message = e.to_string();
        if message.contains("required revision has been compacted") {
            let compacted = self.compacted_revision().await.unwrap_or(requested + 1);
            return Error::Compacted {
                requested,
                compacted,
            };
        }
        if message.contains("required revision is a future revision") {
            let current = self.current_revision().await.unwrap_or(requested - 1);
            return Error::FutureRevision { requested, current };
        }
        Error::etcd("reading", e)
    }

    /// Runs a compare-and-swap transaction. On failure, the else branch has read the key.
    async fn cas(
        &self,
        key: &[u8],
        compare: Compare,
        then: TxnOp,
    ) -> Result<std::result::Result<etcd_client::TxnResponse, Option<KeyValue>>> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![then])
            .or_else(vec![TxnOp::get(full, None)]);
        let response = self
            .retry(false, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|e| Error::etcd("writing", e))?;
        if response.succeeded() {
            return Ok(Ok(response));
        }
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| self.kv_from(kv)),
            _ => None,
        });
        Ok(Err(current))
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Etcd {
        context: "reading a TLS file",
        source: format!("{}: {e}", path.display()).into(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::etcd("reading a response", "response has no header"))
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &[u8], revision: Option<Revision>) -> Result<Option<KeyValue>> {
        let mut options = GetOptions::new();
        if let Some(rev) = revision.filter(|r| *r > 0) {
            options = options.with_revision(rev);
        }
        let full = self.full_key(key);
        let response = self
            .retry(true, |mut kv| {
                let (full, options) = (full.clone(), options.clone());
                async move { kv.get(full, Some(options)).await }
            })
            .await;
        match response {
            Ok(response) => Ok(response.kvs().first().map(|kv| self.kv_from(kv))),
            Err(e) => Err(self.map_read_error(e, revision.unwrap_or(0)).await),
        }
    }

    async fn range(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
        limit: Option<usize>,
    ) -> Result<RangeResponse> {
        let (start, end) = self.full_range(range);
        let mut options = GetOptions::new().with_range(end);
        if let Some(rev) = revision.filter(|r| *r > 0) {
            options = options.with_revision(rev);
        }
        if let Some(limit) = limit.filter(|l| *l > 0) {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let response = self
            .retry(true, |mut kv| {
                let (start, options) = (start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return Err(self.map_read_error(e, revision.unwrap_or(0)).await),
        };
        Ok(RangeResponse {
            kvs: response.kvs().iter().map(|kv| self.kv_from(kv)).collect(),
            more: response.more(),
            // etcd's header names the newest revision; ours names the one read at.
            revision: match revision.filter(|r| *r > 0) {
                Some(rev) => rev,
                None => header_revision(response.header())?,
            },
        })
    }

    async fn create(&self, key: &[u8], value: Bytes) -> Result<Revision> {
        check_write(key, Some(&value))?;
        let full = self.full_key(key);
        let compare = Compare::create_revision(full.clone(), CompareOp::Equal, 0);
        match self
            .cas(key, compare, TxnOp::put(full, value.to_vec(), None))
            .await?
        {
            Ok(response) => header_revision(response.header()),
            Err(_) => Err(Error::AlreadyExists { key: key.to_vec() }),
        }
    }

    async fn update(&self, key: &[u8], value: Bytes, expected: Revision) -> Result<Revision> {
        check_write(key, Some(&value))?;
        let full = self.full_key(key);
        let compare = Compare::mod_revision(full.clone(), CompareOp::Equal, expected);
        match self
            .cas(key, compare, TxnOp::put(full, value.to_vec(), None))
            .await?
        {
            Ok(response) => header_revision(response.header()),
            Err(current) => Err(Error::Conflict {
                key: key.to_vec(),
                expected,
                current: current.map(Box::new),
            }),
        }
    }

    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        check_write(key, None)?;
        let full = self.full_key(key);
        let compare = match expected {
            Some(rev) => Compare::mod_revision(full.clone(), CompareOp::Equal, rev),
            // "The key exists": etcd has no other way to say it in a comparison.
            None => Compare::create_revision(full.clone(), CompareOp::Greater, 0),
        };
        let delete = TxnOp::delete(
            full,
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        );
        match self.cas(key, compare, delete).await? {
            Ok(response) => {
                let revision = header_revision(response.header())?;
                let prev = response.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Delete(d) => d.prev_kvs().first().map(|kv| self.kv_from(kv)),
                    _ => None,
                });
                let prev =
                    prev.ok_or_else(|| Error::etcd("deleting", "no previous value returned"))?;
                Ok((revision, prev))
            }
            Err(None) => Err(Error::NotFound { key: key.to_vec() }),
            Err(Some(current)) => Err(Error::Conflict {
                key: key.to_vec(),
                expected: expected.unwrap_or(0),
                current: Some(Box::new(current)),
            }),
        }
    }

    async fn watch(&self, range: &KeyRange, start: Revision) -> Result<WatchStream> {
        let (key, end) = self.full_range(range);
        let mut options = WatchOptions::new().with_range(end).with_prev_key();
        if start > 0 {
            options = options.with_start_revision(start);
        }
        let mut attempt = 1;
        let stream = loop {
            let started = self
                .client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .watch(key.clone(), Some(options.clone()))
                .await;
            match started {
                Err(e) if attempt < attempts_for(&e, true, self.attempts) => attempt += 1,
                result => break result.map_err(|e| Error::etcd("starting a watch", e))?,
            }
        };
        let store = self.clone();
        let events = stream
            .map(move |response| -> Vec<Result<Event>> {
                let response = match response {
                    Ok(r) => r,
                    Err(e) => return vec![Err(Error::etcd("watching", e))],
                };
                if response.canceled() {
                    let error = if response.compact_revision() > 0 {
                        Error::Compacted {
                            requested: start,
                            compacted: response.compact_revision(),
                        }
                    } else {
                        Error::etcd(
                            "watching",
                            format!("watch cancelled: {}", response.cancel_reason()),
                        )
                    };
                    return vec![Err(error)];
                }
                response
                    .events()
                    .iter()
                    .filter_map(|event| {
                        let kv = store.kv_from(event.kv()?);
                        let prev = event.prev_kv().map(|p| store.kv_from(p));
                        let kind = match event.event_type() {
                            EventType::Delete => EventKind::Deleted,
                            EventType::Put if kv.version == 1 => EventKind::Created,
                            EventType::Put => EventKind::Modified,
                        };
                        Some(Ok(Event { kind, kv, prev }))
                    })
                    .collect()
            })
            .flat_map(futures::stream::iter);
        // End the stream after its first error, as the trait promises: stop polling etcd.
        let events = futures::stream::unfold(Some(Box::pin(events)), |state| async move {
            let mut events = state?;
            let item = events.next().await?;
            let next = if item.is_ok() { Some(events) } else { None };
            Some((item, next))
        });
        Ok(Box::pin(events))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let response = self
            .retry(
                true,
                |mut kv| async move { kv.compact(revision, None).await },
            )
            .await;
        match response {
            Ok(_) => Ok(()),
            Err(e) => {
                let message = e.to_string();
                if message.contains("required revision has been compacted") {
                    // Already compacted at or above: the same no-op as the embedded store.
                    Ok(())
                } else if message.contains("future revision") {
                    let current = self.current_revision().await?;
                    Err(Error::FutureRevision {
                        requested: revision,
                        current,
                    })
                } else {
                    Err(Error::etcd("compacting", e))
                }
            }
        }
    }

    async fn current_revision(&self) -> Result<Revision> {
        let response = self
            .kv()
            .get(
                self.full_key(b"\0"),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(|e| Error::etcd("reading the revision", e))?;
        header_revision(response.header())
    }

    /// etcd does not report its compaction floor, but a read below it fails: binary
    /// search for the oldest readable revision (a few dozen count-only reads).
    async fn compacted_revision(&self) -> Result<Revision> {
        let current = self.current_revision().await?;
        let probe = self.full_key(b"\0");
        let readable = |rev: Revision| {
            let probe = probe.clone();
            async move {
                let options = GetOptions::new().with_count_only().with_revision(rev);
                let response = self
                    .retry(true, |mut kv| {
                        let (probe, options) = (probe.clone(), options.clone());
                        async move { kv.get(probe, Some(options)).await }
                    })
                    .await;
                match response {
                    Ok(_) => Ok(true),
                    Err(e)
                        if e.to_string()
                            .contains("required revision has been compacted") =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(Error::etcd("probing the compaction revision", e)),
                }
            }
        };
        if readable(1).await? {
            return Ok(0);
        }
        // Invariant: `low` is compacted away, `high` is readable.
        let (mut low, mut high) = (1, current);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if readable(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        Ok(high)
    }

    async fn health(&self) -> Result<()> {
        self.current_revision().await.map(|_| ())
    }
}
