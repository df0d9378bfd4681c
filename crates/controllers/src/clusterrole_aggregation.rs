//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` gets
//! the rules of every ClusterRole its selectors select (in name order, each rule once),
//! so `admin`, `edit` and `view` grow with the roles labelled
//! `rbac.authorization.k8s.io/aggregate-to-*`, as upstream's controller does.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::Error;

const MANAGER: &str = "clusterrole-aggregation-controller";

pub async fn run(client: kube::Client) -> Result<(), Error> {
    let api: Api<ClusterRole> = Api::all(client);
    let mut events = watcher::watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut roles: BTreeMap<String, ClusterRole> = BTreeMap::new();
    let mut initial: BTreeMap<String, ClusterRole> = BTreeMap::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => initial.clear(),
            Ok(Event::InitApply(role)) => {
                if let Some(name) = role.metadata.name.clone() {
                    initial.insert(name, role);
                }
                continue;
            }
            Ok(Event::InitDone) => roles = std::mem::take(&mut initial),
            Ok(Event::Apply(role)) => {
                if let Some(name) = role.metadata.name.clone() {
                    roles.insert(name, role);
                }
            }
            Ok(Event::Delete(role)) => {
                if let Some(name) = &role.metadata.name {
                    roles.remove(name);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "watching ClusterRoles");
                continue;
            }
        }
        sync(&api, &roles).await;
    }
    Ok(())
}

/// The rules an aggregated role should have.
fn aggregate(role: &ClusterRole, all: &BTreeMap<String, ClusterRole>) -> Option<Vec<PolicyRule>> {
    let selectors = &role.aggregation_rule.as_ref()?.cluster_role_selectors;
    let selectors = selectors.as_ref()?;
    let mut rules: Vec<PolicyRule> = Vec::new();
    for (name, other) in all {
        if Some(name) == role.metadata.name.as_ref() {
            continue;
        }
        let labels = other.metadata.labels.clone().unwrap_or_default();
        if !selectors
            .iter()
            .any(|s| skiff_api::selector::matches(s, &labels))
        {
            continue;
        }
        for rule in other.rules.iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    Some(rules)
}

async fn sync(api: &Api<ClusterRole>, roles: &BTreeMap<String, ClusterRole>) {
    for (name, role) in roles {
        let Some(rules) = aggregate(role, roles) else {
            continue;
        };
        if role.rules.clone().unwrap_or_default() == rules {
            continue;
        }
        let patch = serde_json::json!({"rules": rules});
        match api
            .patch(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::debug!(%name, rules = rules.len(), "aggregated a ClusterRole"),
            Err(e) => tracing::warn!(%name, error = %e, "aggregating a ClusterRole"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::AggregationRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn role(name: &str, labels: &[(&str, &str)], verbs: &[&str]) -> ClusterRole {
        ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            rules: Some(vec![PolicyRule {
                verbs: verbs.iter().map(|v| v.to_string()).collect(),
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn selected_roles_rules_are_gathered_once_in_name_order() {
        let mut view = role("view", &[], &[]);
        view.rules = None;
        view.aggregation_rule = Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some([("agg".to_string(), "view".to_string())].into()),
                ..Default::default()
            }]),
        });
        let all: BTreeMap<String, ClusterRole> = [
            view.clone(),
            role("b-reader", &[("agg", "view")], &["list"]),
            role("a-reader", &[("agg", "view")], &["get"]),
            role("dup", &[("agg", "view")], &["get"]),
            role("other", &[("agg", "edit")], &["delete"]),
        ]
        .into_iter()
        .map(|r| (r.metadata.name.clone().unwrap_or_default(), r))
        .collect();
        let rules = aggregate(&view, &all).expect("aggregated");
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, ["get", "list"]);
        assert!(aggregate(&all["a-reader"], &all).is_none());
    }
}
