//! LIST: paging with `limit`/`continue` at one consistent revision, upstream's
//! resourceVersion rules, `resourceVersion=0` from the watch cache, selectors.
//!
//! One walk over the selected objects feeds two renderings: JSON values (for Tables,
//! selectors, conversions and internal callers) or, when nothing needs decoding, the
//! response body written straight from the stored bytes with each object's
//! resourceVersion spliced in, which saves parsing and re-serialising every object.

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_storage::{KeyRange, KeyValue, Revision};

use super::Resource;
use super::object::{decode, meta, parse_revision};
use super::store::{ListOptions, Registry, subject};
use crate::status::ApiError;

/// A `KIND List`. The items are moved in: `json!` would copy each by serialising it.
pub(crate) fn list_of(r: &Resource, metadata: Value, items: Vec<Value>) -> Value {
    let mut list = serde_json::Map::new();
    list.insert("kind".into(), Value::String(format!("{}List", r.kind)));
    list.insert("apiVersion".into(), Value::String(r.api_version()));
    list.insert("metadata".into(), metadata);
    list.insert("items".into(), Value::Array(items));
    Value::Object(list)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(rv: Revision, last_key: &[u8]) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: String::from_utf8_lossy(last_key).into_owned(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_continue(token: &str, prefix: &str) -> Result<ContinueToken, ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if !token.start.starts_with(prefix) {
        return Err(bad());
    }
    Ok(token)
}

impl Registry {
    pub async fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Value, ApiError> {
        let mut items = Vec::new();
        let metadata = self
            .walk_list(r, ns, opts, &mut |kv| {
                let obj = decode(r, kv)?;
                if selected(opts, &obj) {
                    items.push(obj);
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
        Ok(list_of(r, metadata, items))
    }

    /// The LIST response body. Without selectors or a storage conversion the objects
    /// are not decoded: their stored JSON is copied with the resourceVersion added.
    pub async fn list_body(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Bytes, ApiError> {
        if !opts.label_selector.is_empty()
            || !opts.field_selector.is_empty()
            || r.from_storage.is_some()
        {
            let list = self.list(r, ns, opts).await?;
            return serde_json::to_vec(&list)
                .map(Bytes::from)
                .map_err(ApiError::internal);
        }
        let mut items: Vec<u8> = Vec::new();
        let metadata = self
            .walk_list(r, ns, opts, &mut |kv| {
                if !items.is_empty() {
                    items.push(b',');
                }
                if !splice_resource_version(&kv.value, kv.mod_revision, &mut items) {
                    let obj = decode(r, kv)?;
                    serde_json::to_writer(&mut items, &obj).map_err(ApiError::internal)?;
                }
                Ok(true)
            })
            .await?;
        let mut body = Vec::with_capacity(items.len() + 256);
        body.extend_from_slice(b"{\"apiVersion\":");
        serde_json::to_writer(&mut body, &r.api_version()).map_err(ApiError::internal)?;
        body.extend_from_slice(b",\"items\":[");
        body.extend_from_slice(&items);
        body.extend_from_slice(b"],\"kind\":");
        serde_json::to_writer(&mut body, &format!("{}List", r.kind)).map_err(ApiError::internal)?;
        body.extend_from_slice(b",\"metadata\":");
        serde_json::to_writer(&mut body, &metadata).map_err(ApiError::internal)?;
        body.push(b'}');
        Ok(Bytes::from(body))
    }

    /// Walks the objects a LIST selects, handing each stored key-value to `take`, which
    /// says whether it went into the result (what `limit` counts). Returns the list's
    /// metadata (resourceVersion, continue).
    async fn walk_list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
        take: &mut (dyn FnMut(&KeyValue) -> Result<bool, ApiError> + Send),
    ) -> Result<Value, ApiError> {
        let prefix = r.key_prefix(ns);
        // resourceVersion=0 ("any version"): from the watch cache, whole (the limit does
        // not apply, as upstream).
        if opts.continue_token.is_none() && opts.resource_version.as_deref() == Some("0") {
            let range = KeyRange::prefix(prefix);
            let snapshot = self
                .cache
                .list(&r.key_prefix(None), &range)
                .await
                .map_err(|e| ApiError::from_store(e, &subject(r, "")))?;
            for kv in &snapshot.kvs {
                take(kv)?;
            }
            return Ok(json!({"resourceVersion": snapshot.revision.to_string()}));
        }
        let (mut range, mut revision) = match &opts.continue_token {
            Some(token) => {
                let token = decode_continue(token, &prefix)?;
                (
                    KeyRange::prefix(prefix.clone()).continue_after(token.start.as_bytes()),
                    Some(token.rv),
                )
            }
            None => (
                KeyRange::prefix(prefix.clone()),
                self.list_revision(opts).await?,
            ),
        };
        let limit = opts.limit.filter(|l| *l > 0);
        // Pages start at the limit and double while filtering leaves them short, as
        // upstream's etcd3 store does, so a selective selector does not cost one
        // datastore round trip per `limit` keys.
        let mut page_size = limit.map(|l| l.max(1));
        let mut taken = 0;
        let mut continue_token = None;
        let list_revision;
        'pages: loop {
            let page = self
                .store
                .range(&range, revision, page_size)
                .await
                .map_err(|e| match e {
                    skiff_storage::Error::Compacted { .. } if opts.continue_token.is_some() => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    e => ApiError::from_store(e, &subject(r, "")),
                })?;
            revision = Some(page.revision);
            let count = page.kvs.len();
            for (i, kv) in page.kvs.iter().enumerate() {
                if take(kv)? {
                    taken += 1;
                }
                if limit.is_some_and(|l| taken >= l) && (i + 1 < count || page.more) {
                    continue_token = Some(encode_continue(page.revision, &kv.key));
                    list_revision = page.revision;
                    break 'pages;
                }
            }
            match page.next_page(&range) {
                Some(next) => range = next,
                None => {
                    list_revision = page.revision;
                    break;
                }
            }
            page_size = page_size.map(|p| (p * 2).min(10_000));
        }
        let mut metadata = json!({"resourceVersion": list_revision.to_string()});
        if let Some(token) = continue_token {
            metadata["continue"] = json!(token);
        }
        Ok(metadata)
    }

    /// The revision a list reads at (`None`: the newest), by upstream's resourceVersion
    /// rules.
    async fn list_revision(&self, opts: &ListOptions) -> Result<Option<Revision>, ApiError> {
        let rv = match opts.resource_version.as_deref() {
            None | Some("") | Some("0") => return Ok(None),
            Some(rv) => parse_revision(rv)?,
        };
        let exact = match opts.resource_version_match.as_deref() {
            Some("Exact") => true,
            Some("NotOlderThan") => false,
            None | Some("") => opts.limit.is_some_and(|l| l > 0),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid resourceVersionMatch: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        };
        if exact {
            return Ok(Some(rv));
        }
        let current = self
            .store
            .current_revision()
            .await
            .map_err(ApiError::internal)?;
        if rv > current {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {rv}, current: {current}"
            )));
        }
        Ok(None)
    }
}

fn selected(opts: &ListOptions, obj: &Value) -> bool {
    opts.label_selector.matches(
        meta(obj)
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object),
    ) && opts.field_selector.matches(obj)
}

/// Copies a stored object (compact JSON) into `out` with
/// `"resourceVersion":"REV"` added as the first field of its top-level `metadata`.
/// `false` (nothing written) if the bytes are not shaped as expected.
pub(crate) fn splice_resource_version(
    stored: &[u8],
    revision: Revision,
    out: &mut Vec<u8>,
) -> bool {
    let Some(at) = top_level_object_value(stored, b"metadata") else {
        return false;
    };
    out.extend_from_slice(&stored[..=at]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(revision.to_string().as_bytes());
    out.push(b'"');
    if stored.get(at + 1) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(&stored[at + 1..]);
    true
}

/// The position of the `{` opening the value of top-level key `key` in a compact JSON
/// object, skipping strings (with escapes) and nested values.
fn top_level_object_value(json: &[u8], key: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    if json[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let end = i;
                // A key at depth 1 followed by ':' and an object.
                if depth == 1
                    && json.get(start..end) == Some(key)
                    && json.get(end + 1) == Some(&b':')
                    && json.get(end + 2) == Some(&b'{')
                {
                    return Some(end + 2);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_versions_are_spliced_into_top_level_metadata_only() {
        let stored = br#"{"data":{"metadata":"{\"x\":1}","k\"metadata\":{":"v"},"kind":"ConfigMap","metadata":{"name":"a"},"spec":{"template":{"metadata":{}}}}"#;
        let mut out = Vec::new();
        assert!(splice_resource_version(stored, 42, &mut out));
        let v: Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(v["metadata"], json!({"name": "a", "resourceVersion": "42"}));
        assert_eq!(v["spec"]["template"]["metadata"], json!({}));
        assert_eq!(v["data"]["metadata"], "{\"x\":1}");
        let mut out = Vec::new();
        assert!(splice_resource_version(br#"{"metadata":{}}"#, 7, &mut out));
        assert_eq!(out, br#"{"metadata":{"resourceVersion":"7"}}"#);
        assert!(!splice_resource_version(
            br#"{"kind":"X"}"#,
            7,
            &mut Vec::new()
        ));
        assert!(!splice_resource_version(b"not json", 7, &mut Vec::new()));
    }
}
