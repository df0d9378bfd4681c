//! Deletion: immediate, or marked with a deletionTimestamp while finalizers remain (or,
//! for pods, for their grace period, so the kubelet can stop them first). A
//! `propagationPolicy` of Orphan or Foreground becomes a finalizer the garbage collector
//! works off, as upstream.

use serde_json::{Value, json};
use skiff_storage::{KeyValue, Revision};

use super::Resource;
use super::object::{
    decode, encode, meta, meta_mut, meta_str, now, set_resource_version, success_status,
};
use super::store::{ListOptions, MAX_RETRIES, Registry, subject};
use crate::status::ApiError;

/// What a delete request asks for (`DeleteOptions`).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOptions {
    pub resource_version: Option<String>,
    pub uid: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub dry_run: bool,
    /// `propagationPolicy` (or the older `orphanDependents`).
    pub propagation: Option<Propagation>,
}

/// What happens to an object's dependents (objects whose ownerReferences name it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// The object goes now; the garbage collector deletes dependents afterwards.
    Background,
    /// The object waits (finalizer `foregroundDeletion`) until its blocking dependents
    /// are gone.
    Foreground,
    /// The object waits (finalizer `orphan`) until its dependents' references to it are
    /// removed; they stay.
    Orphan,
}

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

impl Propagation {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            "Orphan" => Some(Propagation::Orphan),
            _ => None,
        }
    }
}

/// Sets the garbage collection finalizers a deletion's policy asks for (upstream's
/// `shouldUpdateFinalizers`); the garbage collector honours them. Whether they changed.
fn propagation_finalizers(obj: &mut Value, propagation: Option<Propagation>) -> bool {
    let Some(propagation) = propagation else {
        return false;
    };
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return false;
    };
    let before: Vec<String> = meta
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut after: Vec<String> = before
        .iter()
        .filter(|f| *f != ORPHAN && *f != FOREGROUND)
        .cloned()
        .collect();
    match propagation {
        Propagation::Orphan => after.push(ORPHAN.into()),
        Propagation::Foreground => after.push(FOREGROUND.into()),
        Propagation::Background => {}
    }
    let mut sorted_before = before.clone();
    sorted_before.sort();
    let mut sorted_after = after.clone();
    sorted_after.sort();
    if sorted_before == sorted_after {
        return false;
    }
    if after.is_empty() {
        meta.remove("finalizers");
    } else {
        meta.insert("finalizers".into(), json!(after));
    }
    true
}

/// A pod's grace period for this deletion: 0 when it never ran on a node or has
/// finished, else the request's, else the pod's `terminationGracePeriodSeconds`.
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let scheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !scheduled || finished {
        return 0;
    }
    let grace = requested
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    // Upstream turns a negative grace period into the shortest real one; 0 is "now".
    if grace < 0 { 1 } else { grace }
}

impl Registry {
    /// An object marked for deletion whose finalizers are all gone.
    pub(crate) fn finalized(&self, obj: &Value) -> bool {
        let Some(meta) = meta(obj) else { return false };
        let empty = |v: Option<&Value>| v.and_then(Value::as_array).is_none_or(|a| a.is_empty());
        // A pod still in its grace period is the kubelet's to delete (upstream deletes
        // during an update only when the deletion grace period is zero).
        let grace_over = meta
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0;
        meta.contains_key("deletionTimestamp")
            && grace_over
            && empty(meta.get("finalizers"))
            && empty(obj.pointer("/spec/finalizers"))
    }

    pub(crate) async fn remove(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        expected: Revision,
    ) -> Result<KeyValue, ApiError> {
        let key = r.key(ns, name);
        let prev = self
            .store
            .delete(key.as_bytes(), Some(expected))
            .await
            .map(|(_, prev)| prev)
            .map_err(|e| ApiError::from_store(e, &subject(r, name)))?;
        if r.allocates_ips
            && let Ok(svc) = decode(r, &prev)
        {
            self.release_service(&svc, &key).await;
        }
        Ok(prev)
    }

    /// Stores an object just marked for deletion; `None` when it changed meanwhile (the
    /// caller reads it again).
    async fn store_marked(
        &self,
        r: &Resource,
        key: &str,
        mut obj: Value,
        expected: Revision,
        dry_run: bool,
    ) -> Result<Option<Value>, ApiError> {
        if dry_run {
            return Ok(Some(obj));
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        match self
            .store
            .update(key.as_bytes(), encode(r, &obj)?, expected)
            .await
        {
            Ok(revision) => {
                set_resource_version(&mut obj, revision);
                Ok(Some(obj))
            }
            Err(skiff_storage::Error::Conflict { .. }) => Ok(None),
            Err(e) => Err(ApiError::from_store(e, &subject(r, &name))),
        }
    }

    /// Deletes an object, or marks it for deletion while finalizers remain or, for pods
    /// on a node, for their grace period.
    pub async fn delete(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let (preconditions, dry_run) = (
            (options.resource_version.clone(), options.uid.clone()),
            options.dry_run,
        );
        let subj = subject(r, name);
        let key = r.key(ns, name);
        for _ in 0..MAX_RETRIES {
            let current = self.stored(r, ns, name).await?;
            let mut obj = decode(r, &current)?;
            let (rv, uid) = &preconditions;
            if rv
                .as_ref()
                .is_some_and(|rv| *rv != current.mod_revision.to_string())
            {
                return Err(ApiError::conflict(&subj));
            }
            if uid
                .as_ref()
                .is_some_and(|uid| Some(uid.as_str()) != meta_str(&obj, "uid"))
            {
                return Err(ApiError::conflict(&subj));
            }
            let finalizers_changed = propagation_finalizers(&mut obj, options.propagation);
            let has_finalizers = |obj: &Value| {
                meta(obj)
                    .and_then(|m| m.get("finalizers"))
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                    || obj
                        .pointer("/spec/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty())
            };
            let grace = if r.graceful_deletion {
                pod_grace_period(&obj, options.grace_period_seconds)
            } else {
                0
            };
            if grace > 0 {
                // Marked now, deleted by the kubelet once the containers have stopped (or
                // sooner, by a later delete with a shorter grace period).
                let marked = obj
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64);
                if marked.is_some_and(|m| m <= grace) {
                    return Ok(obj);
                }
                let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(grace);
                let at = at.replace_nanosecond(0).unwrap_or(at);
                let at = at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                meta_mut(&mut obj)?.insert("deletionTimestamp".into(), json!(at));
                meta_mut(&mut obj)?.insert("deletionGracePeriodSeconds".into(), json!(grace));
                match self
                    .store_marked(r, &key, obj, current.mod_revision, dry_run)
                    .await?
                {
                    Some(marked) => return Ok(marked),
                    None => continue,
                }
            }
            if !has_finalizers(&obj) {
                if dry_run {
                    return Ok(success_status(r, name, meta_str(&obj, "uid")));
                }
                match self
                    .store
                    .delete(key.as_bytes(), Some(current.mod_revision))
                    .await
                {
                    Ok(_) => {
                        if r.allocates_ips {
                            self.release_service(&obj, &key).await;
                        }
                        if r.returns_deleted_object {
                            return Ok(obj);
                        }
                        return Ok(success_status(r, name, meta_str(&obj, "uid")));
                    }
                    Err(skiff_storage::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(e, &subj)),
                }
            }
            // Finalizers pending: mark, and let their owners finish the deletion. An object
            // already marked only needs its grace period cut to zero.
            let marked = meta(&obj).is_some_and(|m| m.contains_key("deletionTimestamp"));
            let grace = obj
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if marked && grace.is_none_or(|g| g == 0) && !finalizers_changed {
                return Ok(obj);
            }
            if !marked {
                meta_mut(&mut obj)?.insert("deletionTimestamp".into(), json!(now()));
            }
            meta_mut(&mut obj)?.insert("deletionGracePeriodSeconds".into(), json!(0));
            if r.plural == "namespaces" {
                obj["status"] = json!({"phase": "Terminating"});
            }
            match self
                .store_marked(r, &key, obj, current.mod_revision, dry_run)
                .await?
            {
                Some(marked) => return Ok(marked),
                None => continue,
            }
        }
        Err(ApiError::conflict(&subj))
    }

    /// Deletes every object the options select; returns them as a list.
    pub async fn delete_collection(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut list = self.list(r, ns, opts).await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for item in &items {
            let name = meta_str(item, "name").unwrap_or_default();
            let item_ns = meta_str(item, "namespace");
            let options = DeleteOptions {
                dry_run,
                ..Default::default()
            };
            match self.delete(r, item_ns, name, &options).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        list["items"] = json!(items);
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_policies_become_garbage_collector_finalizers() {
        let mut obj = json!({"metadata": {"name": "x", "finalizers": ["example.com/keep"]}});
        assert!(!propagation_finalizers(&mut obj, None));
        assert!(propagation_finalizers(
            &mut obj,
            Some(Propagation::Foreground)
        ));
        assert_eq!(
            obj["metadata"]["finalizers"],
            json!(["example.com/keep", "foregroundDeletion"])
        );
        assert!(!propagation_finalizers(
            &mut obj,
            Some(Propagation::Foreground)
        ));
        assert!(propagation_finalizers(&mut obj, Some(Propagation::Orphan)));
        assert_eq!(
            obj["metadata"]["finalizers"],
            json!(["example.com/keep", "orphan"])
        );
        assert!(propagation_finalizers(
            &mut obj,
            Some(Propagation::Background)
        ));
        assert_eq!(obj["metadata"]["finalizers"], json!(["example.com/keep"]));
    }
}
