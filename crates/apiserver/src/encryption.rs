//! Encryption of stored objects at rest, configured as upstream's
//! `EncryptionConfiguration` (`--encryption-provider-config`): for the resources a rule
//! names, values are written with the rule's first provider and read with whichever
//! provider's prefix they carry. Providers: `aesgcm` (AES-GCM with 16- or 32-byte keys;
//! stored as `k8s:enc:aesgcm:v1:KEYNAME:` + nonce + sealed bytes, the datastore key as
//! authenticated data, as upstream) and `identity` (plain). It wraps the datastore, so
//! every reader above it (the registry, the watch cache) sees plain objects.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use skiff_storage::{
    Error, Event, KeyRange, KeyValue, RangeResponse, Result, Revision, Store, WatchStream,
};

const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceRule>,
}

#[derive(Deserialize)]
struct ResourceRule {
    resources: Vec<String>,
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    identity: Option<serde_json::Value>,
    aescbc: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct KeysConfig {
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
struct KeyConfig {
    name: String,
    secret: String,
}

enum Provider {
    AesGcm(Vec<(String, LessSafeKey)>),
    Identity,
}

struct Rule {
    /// Datastore key prefixes of the resources the rule covers.
    prefixes: Vec<String>,
    providers: Vec<Provider>,
}

/// A parsed EncryptionConfiguration.
pub struct EncryptionConfig {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionConfig({} rules)", self.rules.len())
    }
}

/// The datastore key prefixes a rule's resource names (`secrets`, `deployments.apps`,
/// `*.apps`, `*.*`).
fn prefixes(resource: &str) -> std::result::Result<Vec<String>, String> {
    let (name, group) = match resource.split_once('.') {
        Some((name, group)) => (name, group),
        None => (resource, ""),
    };
    let matching: Vec<String> = crate::registry::CATALOG
        .iter()
        .filter(|r| group == "*" || r.group == group)
        .filter(|r| name == "*" || r.plural == name)
        .map(|r| r.key_prefix(None))
        .collect();
    if matching.is_empty() {
        return Err(format!("resource {resource:?} is not served"));
    }
    Ok(matching)
}

impl EncryptionConfig {
    pub fn load(path: &Path) -> std::result::Result<EncryptionConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> std::result::Result<EncryptionConfig, String> {
        let file: ConfigFile = serde_saphyr::from_str(text)
            .map_err(|e| format!("not an EncryptionConfiguration: {e}"))?;
        if file.kind.as_deref() != Some("EncryptionConfiguration") {
            return Err("kind must be EncryptionConfiguration".into());
        }
        let mut rules = Vec::new();
        for (i, rule) in file.resources.iter().enumerate() {
            let mut all = Vec::new();
            for resource in &rule.resources {
                all.extend(prefixes(resource).map_err(|e| format!("resources[{i}]: {e}"))?);
            }
            let mut providers = Vec::new();
            for (j, p) in rule.providers.iter().enumerate() {
                let at = format!("resources[{i}].providers[{j}]");
                providers.push(match p {
                    ProviderConfig {
                        aesgcm: Some(keys), ..
                    } => {
                        let mut parsed = Vec::new();
                        for key in &keys.keys {
                            let raw = base64::engine::general_purpose::STANDARD
                                .decode(key.secret.trim())
                                .map_err(|_| format!("{at}: key {:?} is not base64", key.name))?;
                            let algorithm = match raw.len() {
                                16 => &AES_128_GCM,
                                32 => &AES_256_GCM,
                                n => {
                                    return Err(format!(
                                        "{at}: key {:?} is {n} bytes; AES-GCM keys here are 16 or 32 bytes",
                                        key.name
                                    ));
                                }
                            };
                            let unbound = UnboundKey::new(algorithm, &raw)
                                .map_err(|_| format!("{at}: key {:?} is not usable", key.name))?;
                            parsed.push((key.name.clone(), LessSafeKey::new(unbound)));
                        }
                        if parsed.is_empty() {
                            return Err(format!("{at}: aesgcm needs at least one key"));
                        }
                        Provider::AesGcm(parsed)
                    }
                    ProviderConfig {
                        identity: Some(_), ..
                    } => Provider::Identity,
                    ProviderConfig {
                        aescbc: Some(_), ..
                    }
                    | ProviderConfig {
                        secretbox: Some(_), ..
                    }
                    | ProviderConfig { kms: Some(_), .. } => {
                        return Err(format!(
                            "{at}: only the aesgcm and identity providers are supported"
                        ));
                    }
                    _ => return Err(format!("{at}: names no provider")),
                });
            }
            if providers.is_empty() {
                return Err(format!("resources[{i}]: no providers"));
            }
            rules.push(Rule {
                prefixes: all,
                providers,
            });
        }
        Ok(EncryptionConfig { rules })
    }

    /// The first rule covering `key` (upstream: the first match wins).
    fn rule(&self, key: &[u8]) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.prefixes.iter().any(|p| key.starts_with(p.as_bytes())))
    }

    fn encrypt(&self, key: &[u8], value: Bytes) -> Result<Bytes> {
        let Some(rule) = self.rule(key) else {
            return Ok(value);
        };
        match rule.providers.first() {
            Some(Provider::AesGcm(keys)) => {
                let Some((name, sealing)) = keys.first() else {
                    return Ok(value);
                };
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| transform("drawing a nonce"))?;
                let mut sealed = value.to_vec();
                sealing
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(key),
                        &mut sealed,
                    )
                    .map_err(|_| transform("encrypting"))?;
                let mut out = Vec::with_capacity(
                    AESGCM_PREFIX.len() + name.len() + 1 + NONCE_LEN + sealed.len(),
                );
                out.extend_from_slice(AESGCM_PREFIX.as_bytes());
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
                Ok(out.into())
            }
            _ => Ok(value),
        }
    }

    fn decrypt(&self, key: &[u8], value: Bytes) -> Result<Bytes> {
        let Some(rule) = self.rule(key) else {
            return Ok(value);
        };
        if let Some(rest) = value.strip_prefix(AESGCM_PREFIX.as_bytes()) {
            for provider in &rule.providers {
                let Provider::AesGcm(keys) = provider else {
                    continue;
                };
                for (name, opening) in keys {
                    let Some(body) = rest
                        .strip_prefix(name.as_bytes())
                        .and_then(|b| b.strip_prefix(b":"))
                    else {
                        continue;
                    };
                    if body.len() < NONCE_LEN {
                        return Err(transform("the stored value is too short"));
                    }
                    let (nonce, sealed) = body.split_at(NONCE_LEN);
                    let nonce = Nonce::try_assume_unique_for_key(nonce)
                        .map_err(|_| transform("a bad nonce"))?;
                    let mut buffer = sealed.to_vec();
                    let plain = opening
                        .open_in_place(nonce, Aad::from(key), &mut buffer)
                        .map_err(|_| transform("decrypting (wrong key or damaged value)"))?;
                    return Ok(Bytes::copy_from_slice(plain));
                }
            }
            return Err(transform("no configured key can decrypt this value"));
        }
        if rule
            .providers
            .iter()
            .any(|p| matches!(p, Provider::Identity))
        {
            Ok(value)
        } else {
            Err(transform(
                "the stored value is not encrypted and identity is not a provider",
            ))
        }
    }
}

fn transform(what: &'static str) -> Error {
    Error::Transform { context: what }
}

/// A datastore whose values are encrypted as an [`EncryptionConfig`] says.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> EncryptedStore {
        EncryptedStore {
            inner,
            config: Arc::new(config),
        }
    }
}

fn open_kv(config: &EncryptionConfig, mut kv: KeyValue) -> Result<KeyValue> {
    if !kv.value.is_empty() {
        kv.value = config.decrypt(&kv.key, kv.value)?;
    }
    Ok(kv)
}

fn open_error(config: &EncryptionConfig, e: Error) -> Error {
    match e {
        Error::Conflict {
            key,
            expected,
            current,
        } => match current.map(|kv| open_kv(config, *kv)).transpose() {
            Ok(current) => Error::Conflict {
                key,
                expected,
                current: current.map(Box::new),
            },
            Err(e) => e,
        },
        other => other,
    }
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &[u8], revision: Option<Revision>) -> Result<Option<KeyValue>> {
        self.inner
            .get(key, revision)
            .await?
            .map(|kv| open_kv(&self.config, kv))
            .transpose()
    }

    async fn range(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
        limit: Option<usize>,
    ) -> Result<RangeResponse> {
        let mut response = self.inner.range(range, revision, limit).await?;
        response.kvs = response
            .kvs
            .into_iter()
            .map(|kv| open_kv(&self.config, kv))
            .collect::<Result<_>>()?;
        Ok(response)
    }

    async fn create(&self, key: &[u8], value: Bytes) -> Result<Revision> {
        let value = self.config.encrypt(key, value)?;
        self.inner.create(key, value).await
    }

    async fn update(&self, key: &[u8], value: Bytes, expected: Revision) -> Result<Revision> {
        let value = self.config.encrypt(key, value)?;
        self.inner
            .update(key, value, expected)
            .await
            .map_err(|e| open_error(&self.config, e))
    }

    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let (revision, kv) = self
            .inner
            .delete(key, expected)
            .await
            .map_err(|e| open_error(&self.config, e))?;
        Ok((revision, open_kv(&self.config, kv)?))
    }

    async fn watch(&self, range: &KeyRange, start: Revision) -> Result<WatchStream> {
        let config = self.config.clone();
        let stream = self.inner.watch(range, start).await?;
        Ok(stream
            .map(move |event| {
                let event = event?;
                Ok(Event {
                    kind: event.kind,
                    kv: open_kv(&config, event.kv)?,
                    prev: event.prev.map(|kv| open_kv(&config, kv)).transpose()?,
                })
            })
            .boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.inner.compacted_revision().await
    }

    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2tpZmYtdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0xMjM="; // 32 bytes

    fn config(providers: &str) -> EncryptionConfig {
        EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .expect("config")
    }

    #[tokio::test]
    async fn secrets_are_sealed_at_rest_and_read_back_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut embedded = skiff_storage::embedded::Config::new(dir.path());
        embedded.compaction_interval = None;
        let inner: Arc<dyn Store> =
            Arc::new(skiff_storage::embedded::Embedded::open(&embedded).expect("store"));
        let sealed = EncryptedStore::new(
            inner.clone(),
            config(&format!(
                "  - aesgcm:\n      keys:\n      - name: key1\n        secret: {KEY}\n  - identity: {{}}\n"
            )),
        );
        let key = b"/registry/secrets/default/s";
        let plain = Bytes::from_static(br#"{"data":{"password":"aHVudGVyMg=="}}"#);
        sealed.create(key, plain.clone()).await.expect("create");
        let raw = inner.get(key, None).await.expect("get").expect("present");
        assert!(raw.value.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!raw.value.windows(8).any(|w| w == b"aHVudGVy"));
        let read = sealed.get(key, None).await.expect("get").expect("present");
        assert_eq!(read.value, plain);
        // Other kinds stay plain; plain secrets written before encryption still read.
        sealed
            .create(b"/registry/configmaps/default/c", Bytes::from_static(b"{}"))
            .await
            .expect("create");
        let raw = inner
            .get(b"/registry/configmaps/default/c", None)
            .await
            .expect("get");
        assert_eq!(raw.map(|kv| kv.value), Some(Bytes::from_static(b"{}")));
        inner
            .create(b"/registry/secrets/default/old", Bytes::from_static(b"{}"))
            .await
            .expect("create");
        assert!(
            sealed
                .get(b"/registry/secrets/default/old", None)
                .await
                .is_ok()
        );
        // A value moved to another key fails authentication.
        let raw = inner.get(key, None).await.expect("get").expect("present");
        inner
            .create(b"/registry/secrets/default/moved", raw.value)
            .await
            .expect("create");
        assert!(
            sealed
                .get(b"/registry/secrets/default/moved", None)
                .await
                .is_err()
        );
        // Without identity, a plain value is refused rather than served.
        let strict = EncryptedStore::new(
            inner.clone(),
            config(&format!(
                "  - aesgcm:\n      keys:\n      - name: key1\n        secret: {KEY}\n"
            )),
        );
        assert!(
            strict
                .get(b"/registry/secrets/default/old", None)
                .await
                .is_err()
        );
        assert!(strict.get(key, None).await.is_ok());
    }

    #[test]
    fn bad_configurations_are_refused_clearly() {
        let err = EncryptionConfig::parse("kind: Nope\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("EncryptionConfiguration"), "{err}");
        let short = "  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n";
        let err = EncryptionConfig::parse(&format!(
            "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{short}"
        ))
        .err()
        .unwrap_or_default();
        assert!(err.contains("16 or 32 bytes"), "{err}");
        let err = EncryptionConfig::parse(
            "kind: EncryptionConfiguration\nresources:\n- resources: [widgets]\n  providers:\n  - identity: {}\n",
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("not served"), "{err}");
    }
}
