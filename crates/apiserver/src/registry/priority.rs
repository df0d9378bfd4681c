//! Upstream's Priority admission: a pod's `priorityClassName` (or the global default
//! class) becomes its `spec.priority` and `spec.preemptionPolicy`, which the scheduler
//! orders and preempts by. The two system classes exist from the first start.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::builtin;
use super::object::{decode, meta_str};
use super::store::{Registry, WriteOptions};
use crate::status::ApiError;

/// The classes every cluster has, as upstream bootstraps them.
const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// How long the global default class is remembered between pod creations.
const DEFAULT_TTL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq)]
struct Class {
    name: String,
    value: i64,
    preemption_policy: String,
}

impl Class {
    fn of(obj: &Value) -> Class {
        Class {
            name: meta_str(obj, "name").unwrap_or_default().to_string(),
            value: obj.get("value").and_then(Value::as_i64).unwrap_or(0),
            preemption_policy: obj
                .get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        }
    }
}

/// The global default class, looked up at most once a second.
#[derive(Default)]
pub(crate) struct DefaultClass(Mutex<Option<(Instant, Option<Class>)>>);

impl Registry {
    pub async fn ensure_priority_classes(&self) -> Result<(), ApiError> {
        let classes = builtin("scheduling.k8s.io", "v1", "priorityclasses")?;
        for (name, value, description) in SYSTEM_CLASSES {
            let class = json!({
                "metadata": {"name": name},
                "value": value,
                "description": description,
            });
            match self
                .create(classes, None, class, WriteOptions::default())
                .await
            {
                Ok(_) | Err(ApiError { code: 409, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets a new pod's priority from its class, as upstream's admission does.
    pub(crate) async fn admit_priority(&self, pod: &mut Value) -> Result<(), ApiError> {
        let classes = builtin("scheduling.k8s.io", "v1", "priorityclasses")?;
        let pod_name = meta_str(pod, "name").unwrap_or_default().to_string();
        let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
            return Ok(());
        };
        let named = spec
            .get("priorityClassName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let class = match named {
            Some(name) => match self.get(classes, None, &name).await {
                Ok(obj) => Some(Class::of(&obj)),
                Err(ApiError { code: 404, .. }) => {
                    return Err(ApiError::forbidden(format!(
                        "pods \"{pod_name}\" is forbidden: no PriorityClass with name {name} was found"
                    )));
                }
                Err(e) => return Err(e),
            },
            None => self.global_default().await?,
        };
        let (value, policy) = match &class {
            Some(c) => (c.value, c.preemption_policy.as_str()),
            None => (0, "PreemptLowerPriority"),
        };
        if let Some(given) = spec.get("priority").and_then(Value::as_i64)
            && given != value
        {
            return Err(ApiError::forbidden(format!(
                "pods \"{pod_name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
            && given != policy
        {
            return Err(ApiError::forbidden(format!(
                "pods \"{pod_name}\" is forbidden: the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
            )));
        }
        spec["priority"] = json!(value);
        if let Some(c) = &class {
            spec["priorityClassName"] = json!(c.name);
        }
        spec["preemptionPolicy"] = json!(policy);
        Ok(())
    }

    async fn global_default(&self) -> Result<Option<Class>, ApiError> {
        if let Ok(cached) = self.default_class.0.lock()
            && let Some((at, class)) = cached.as_ref()
            && at.elapsed() < DEFAULT_TTL
        {
            return Ok(class.clone());
        }
        let classes = builtin("scheduling.k8s.io", "v1", "priorityclasses")?;
        let all = skiff_storage::range_all(
            self.store.as_ref(),
            &skiff_storage::KeyRange::prefix(classes.key_prefix(None)),
        )
        .await
        .map_err(ApiError::internal)?;
        let mut found: Option<Class> = None;
        for kv in &all.kvs {
            let obj = decode(classes, kv)?;
            if obj.get("globalDefault").and_then(Value::as_bool) == Some(true) {
                let class = Class::of(&obj);
                // Upstream picks the lowest value when several claim to be the default.
                if found.as_ref().is_none_or(|f| class.value < f.value) {
                    found = Some(class);
                }
            }
        }
        if let Ok(mut cached) = self.default_class.0.lock() {
            *cached = Some((Instant::now(), found.clone()));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::test_registry;
    use super::*;

    #[tokio::test]
    async fn a_class_sets_priority_and_an_unknown_one_is_refused() {
        let (_dir, registry) = test_registry();
        registry.ensure_priority_classes().await.expect("classes");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "system-node-critical"}});
        registry.admit_priority(&mut pod).await.expect("admit");
        assert_eq!(pod["spec"]["priority"], json!(2_000_001_000));
        assert_eq!(
            pod["spec"]["preemptionPolicy"],
            json!("PreemptLowerPriority")
        );

        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "nope"}});
        let err = registry
            .admit_priority(&mut pod)
            .await
            .expect_err("unknown");
        assert_eq!(err.code, 403);
        assert!(
            err.message.contains("no PriorityClass with name nope"),
            "{}",
            err.message
        );

        let mut pod = json!({"metadata": {"name": "p"}, "spec": {}});
        registry.admit_priority(&mut pod).await.expect("admit");
        assert_eq!(pod["spec"]["priority"], json!(0));
    }
}
