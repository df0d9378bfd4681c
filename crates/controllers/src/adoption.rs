//! Upstream's ControllerRefManager: a controller claims the objects its selector
//! matches. Orphans (no controller owner) that match are adopted by adding an owner
//! reference; objects it owns that stopped matching are released by removing it. Both
//! are JSON patches with a `test` on the object's uid and resourceVersion, so a
//! concurrent change makes the patch fail instead of clobbering it (the next sync sees
//! the object as it is now).

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The objects among `candidates` (one namespace) that `owner` controls after adopting
/// matching orphans and releasing owned objects that no longer match.
pub(crate) async fn claim<K>(
    api: &Api<K>,
    owner: &OwnerReference,
    owner_deleting: bool,
    selector: &LabelSelector,
    candidates: Vec<Arc<K>>,
) -> Result<Vec<Arc<K>>, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut mine = Vec::new();
    let empty = Default::default();
    for object in candidates {
        let meta = object.meta();
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let matches = selects(selector, labels);
        let refs = meta.owner_references.as_deref().unwrap_or_default();
        let controller = refs.iter().position(|o| o.controller == Some(true));
        let name = meta.name.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        let version = meta.resource_version.clone().unwrap_or_default();
        match controller.map(|i| (i, &refs[i])) {
            Some((_, c)) if c.uid == owner.uid && (matches || owner_deleting) => mine.push(object),
            Some((i, c)) if c.uid == owner.uid => {
                // No longer selected: let it go.
                let patch = json!([
                    {"op": "test", "path": "/metadata/uid", "value": uid},
                    {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                    {"op": "test", "path": format!("/metadata/ownerReferences/{i}/uid"), "value": owner.uid},
                    {"op": "remove", "path": format!("/metadata/ownerReferences/{i}")},
                ]);
                release_or_adopt(api, &name, patch).await?;
            }
            Some(_) => {}
            None => {
                if !matches || owner_deleting || meta.deletion_timestamp.is_some() {
                    continue;
                }
                let add = if meta.owner_references.is_some() {
                    json!({"op": "add", "path": "/metadata/ownerReferences/-", "value": owner})
                } else {
                    json!({"op": "add", "path": "/metadata/ownerReferences", "value": [owner]})
                };
                let patch = json!([
                    {"op": "test", "path": "/metadata/uid", "value": uid},
                    {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                    add,
                ]);
                if let Some(adopted) = release_or_adopt(api, &name, patch).await? {
                    tracing::info!(object = %name, owner = %owner.name, "adopted an orphan");
                    mine.push(Arc::new(adopted));
                }
            }
        }
    }
    Ok(mine)
}

/// Whether a controller's selector selects these labels (an empty one selects nothing).
pub(crate) fn selects(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    !selector_is_empty(selector) && skiff_api::selector::matches(selector, labels)
}

/// Queues the controllers in `orphan`'s namespace whose selector selects it: they may
/// adopt it.
pub(crate) fn queue_adopters<C, O>(
    queue: &crate::queue::WorkQueue,
    controllers: &kube::runtime::reflector::Store<C>,
    orphan: &O,
    selector: impl Fn(&C) -> Option<&LabelSelector>,
) where
    C: Resource<DynamicType = ()> + Clone + 'static,
    O: Resource,
{
    let meta = orphan.meta();
    let labels = meta.labels.clone().unwrap_or_default();
    for controller in controllers.state() {
        if controller.meta().namespace == meta.namespace
            && selector(&controller).is_some_and(|s| selects(s, &labels))
        {
            queue.add(&crate::queue::object_key(&*controller));
        }
    }
}

fn selector_is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// Applies an ownership patch; an object that is gone or changed meanwhile is skipped
/// (the next sync sees it as it is now).
async fn release_or_adopt<K>(
    api: &Api<K>,
    name: &str,
    patch: serde_json::Value,
) -> Result<Option<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(object) => Ok(Some(object)),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(None),
        Err(e) => Err(e),
    }
}
