//! Deletion: immediate, or marked with a deletionTimestamp while finalizers remain (or,
//! for pods, for their grace period, so the kubelet can stop them first).

use serde_json::{Value, json};
use skiff_storage::{KeyValue, Revision};

use super::Resource;
use super::object::{
    decode, encode, meta, meta_mut, meta_str, now, set_resource_version, success_status,
};
use super::store::{ListOptions, MAX_RETRIES, Registry, subject};
use crate::status::ApiError;

impl Registry {
    /// An object marked for deletion whose finalizers are all gone.
    pub(crate) fn finalized(&self, obj: &Value) -> bool {
        let Some(meta) = meta(obj) else { return false };
        let empty = |v: Option<&Value>| v.and_then(Value::as_array).is_none_or(|a| a.is_empty());
        meta.contains_key("deletionTimestamp")
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
        self.store
            .delete(key.as_bytes(), Some(expected))
            .await
            .map(|(_, prev)| prev)
            .map_err(|e| ApiError::from_store(e, &subject(r, name)))
    }

    /// Deletes an object, or marks it for deletion while finalizers remain.
    pub async fn delete(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        preconditions: (Option<String>, Option<String>),
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let subj = subject(r, name);
        let key = r.key(ns, name);
        for _ in 0..MAX_RETRIES {
            let current = self
                .store
                .get(key.as_bytes(), None)
                .await
                .map_err(|e| ApiError::from_store(e, &subj))?
                .ok_or_else(|| ApiError::not_found(&subj))?;
            let mut obj = decode(&current)?;
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
            if !has_finalizers(&obj) {
                if dry_run {
                    return Ok(success_status(r, name, meta_str(&obj, "uid")));
                }
                match self
                    .store
                    .delete(key.as_bytes(), Some(current.mod_revision))
                    .await
                {
                    Ok(_) => return Ok(success_status(r, name, meta_str(&obj, "uid"))),
                    Err(skiff_storage::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(e, &subj)),
                }
            }
            // Finalizers pending: mark, and let their owners finish the deletion.
            if meta(&obj).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return Ok(obj);
            }
            meta_mut(&mut obj)?.insert("deletionTimestamp".into(), json!(now()));
            meta_mut(&mut obj)?.insert("deletionGracePeriodSeconds".into(), json!(0));
            if r.plural == "namespaces" {
                obj["status"] = json!({"phase": "Terminating"});
            }
            if dry_run {
                return Ok(obj);
            }
            match self
                .store
                .update(key.as_bytes(), encode(&obj)?, current.mod_revision)
                .await
            {
                Ok(revision) => {
                    set_resource_version(&mut obj, revision);
                    return Ok(obj);
                }
                Err(skiff_storage::Error::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, &subj)),
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
            match self.delete(r, item_ns, name, (None, None), dry_run).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        list["items"] = json!(items);
        Ok(list)
    }
}
