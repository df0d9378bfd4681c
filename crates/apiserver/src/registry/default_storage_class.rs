//! Upstream's DefaultStorageClass admission: a new claim that names no class (the field
//! absent or null, not `""`, and no beta class annotation) gets the default StorageClass, the one annotated
//! `storageclass.kubernetes.io/is-default-class: "true"` (the newest if several are).

use serde_json::{Value, json};

use super::builtin;
use super::store::{ListOptions, Registry};
use crate::status::ApiError;

const DEFAULT: &str = "storageclass.kubernetes.io/is-default-class";

/// The default class among `classes`: the newest, then the first by name.
fn default_class(classes: &[Value]) -> Option<&str> {
    classes
        .iter()
        .filter(|c| c["metadata"]["annotations"][DEFAULT] == "true")
        .max_by(|a, b| {
            let stamp = |c: &Value| {
                c["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            };
            let name = |c: &Value| c["metadata"]["name"].as_str().unwrap_or("").to_string();
            stamp(a).cmp(&stamp(b)).then_with(|| name(b).cmp(&name(a)))
        })
        .and_then(|c| c["metadata"]["name"].as_str())
}

impl Registry {
    pub(crate) async fn admit_default_storage_class(
        &self,
        claim: &mut Value,
    ) -> Result<(), ApiError> {
        let named = claim["spec"]
            .get("storageClassName")
            .is_some_and(|c| !c.is_null());
        let annotated = claim["metadata"]["annotations"]
            .get("volume.beta.kubernetes.io/storage-class")
            .is_some();
        if !claim["spec"].is_object() || named || annotated {
            return Ok(());
        }
        let kinds = builtin("storage.k8s.io", "v1", "storageclasses")?;
        let cached = ListOptions {
            resource_version: Some("0".into()),
            ..Default::default()
        };
        let list = self.list(kinds, None, &cached).await?;
        let classes = list["items"].as_array().cloned().unwrap_or_default();
        if let Some(name) = default_class(&classes) {
            claim["spec"]["storageClassName"] = json!(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_default_class_wins() {
        let class = |name: &str, at: &str, default: bool| {
            json!({"metadata": {"name": name, "creationTimestamp": at,
                "annotations": {DEFAULT: if default { "true" } else { "false" }}}})
        };
        let classes = [
            class("old", "2026-01-01T00:00:00Z", true),
            class("new", "2026-02-01T00:00:00Z", true),
            class("newest", "2026-03-01T00:00:00Z", false),
        ];
        assert_eq!(default_class(&classes), Some("new"));
        assert_eq!(default_class(&classes[2..]), None);
    }
}
