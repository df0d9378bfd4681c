//! RBAC's rule arithmetic, as upstream's `rbac/v1` helpers and escalation check define
//! it: whether one rule allows a request, and whether a set of rules covers another
//! (you may only grant what you hold).

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::Attributes;

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|v| v == "*" || v == wanted)
}

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

/// Whether `rule` allows the request described by `attrs`.
pub(crate) fn allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    if !has(&rule.verbs, &attrs.verb) {
        return false;
    }
    match &attrs.resource {
        Some(res) => {
            has(list(&rule.api_groups), &res.group)
                && resource_matches(list(&rule.resources), &res.resource, &res.subresource)
                && name_matches(list(&rule.resource_names), &res.name)
        }
        None => url_matches(list(&rule.non_resource_urls), &attrs.path),
    }
}

fn resource_matches(rule: &[String], resource: &str, subresource: &str) -> bool {
    rule.iter().any(|r| {
        if r == "*" {
            return true;
        }
        if subresource.is_empty() {
            return r == resource;
        }
        r.strip_prefix(resource)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|s| s == subresource)
            || r.strip_prefix("*/").is_some_and(|s| s == subresource)
    })
}

fn name_matches(names: &[String], name: &str) -> bool {
    names.is_empty() || names.iter().any(|n| n == name)
}

fn url_matches(rule: &[String], path: &str) -> bool {
    rule.iter().any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// One verb on one resource (or URL) of one group, possibly one name: the unit the
/// escalation check compares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Atom {
    group: Option<String>,
    resource: Option<String>,
    name: Option<String>,
    url: Option<String>,
    verb: String,
}

/// Upstream's BreakdownRule: a rule as the atomic rules it is made of.
fn breakdown(rule: &PolicyRule) -> Vec<Atom> {
    let mut atoms = Vec::new();
    for group in list(&rule.api_groups) {
        for resource in list(&rule.resources) {
            for verb in &rule.verbs {
                let names = list(&rule.resource_names);
                if names.is_empty() {
                    atoms.push(Atom {
                        group: Some(group.clone()),
                        resource: Some(resource.clone()),
                        name: None,
                        url: None,
                        verb: verb.clone(),
                    });
                }
                for name in names {
                    atoms.push(Atom {
                        group: Some(group.clone()),
                        resource: Some(resource.clone()),
                        name: Some(name.clone()),
                        url: None,
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    for url in list(&rule.non_resource_urls) {
        for verb in &rule.verbs {
            atoms.push(Atom {
                group: None,
                resource: None,
                name: None,
                url: Some(url.clone()),
                verb: verb.clone(),
            });
        }
    }
    atoms
}

/// Whether an owner's rule covers one atomic rule (wildcards cover everything they
/// stand for; a rule limited to names covers only those names).
fn rule_covers(owner: &PolicyRule, atom: &Atom) -> bool {
    if !has(&owner.verbs, &atom.verb) {
        return false;
    }
    if let Some(url) = &atom.url {
        return list(&owner.non_resource_urls).iter().any(|u| {
            u == "*"
                || u == url
                || u.strip_suffix('*').is_some_and(|prefix| {
                    url.starts_with(prefix) && (!url.ends_with('*') || url.len() > prefix.len())
                })
        });
    }
    let (Some(group), Some(resource)) = (&atom.group, &atom.resource) else {
        return false;
    };
    if !has(list(&owner.api_groups), group) {
        return false;
    }
    let resources = list(&owner.resources);
    let resource_ok = resources.iter().any(|r| {
        r == "*"
            || r == resource
            || r.strip_prefix("*/")
                .is_some_and(|sub| resource.split_once('/').is_some_and(|(_, s)| s == sub))
    });
    if !resource_ok {
        return false;
    }
    let names = list(&owner.resource_names);
    names.is_empty() || atom.name.as_ref().is_some_and(|n| names.contains(n))
}

/// Upstream's Covers: whether `owner` holds every permission in `wanted`; the atomic
/// rules it lacks otherwise, compacted (verbs of one resource merged).
pub(crate) fn covers(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Result<(), Vec<PolicyRule>> {
    let missing: Vec<Atom> = wanted
        .iter()
        .flat_map(breakdown)
        .filter(|atom| !owner.iter().any(|o| rule_covers(o, atom)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // Compact as upstream: one rule per (group, resource, name) or URL with its verbs in
    // the order asked; listed in the order of their descriptions.
    type Key = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let mut compact: Vec<(Key, Vec<String>)> = Vec::new();
    for atom in missing {
        let key = (atom.group, atom.resource, atom.name, atom.url);
        match compact.iter_mut().find(|(k, _)| *k == key) {
            Some((_, verbs)) if !verbs.contains(&atom.verb) => verbs.push(atom.verb),
            Some(_) => {}
            None => compact.push((key, vec![atom.verb])),
        }
    }
    let mut rules: Vec<PolicyRule> = compact
        .into_iter()
        .map(|((group, resource, name, url), verbs)| PolicyRule {
            api_groups: group.map(|g| vec![g]),
            resources: resource.map(|r| vec![r]),
            resource_names: name.map(|n| vec![n]),
            non_resource_urls: url.map(|u| vec![u]),
            verbs,
        })
        .collect();
    rules.sort_by_cached_key(compact_string);
    Err(rules)
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub(crate) fn go_quoted(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Upstream's CompactString: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub(crate) fn compact_string(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    for (label, items) in [
        ("APIGroups", list(&rule.api_groups)),
        ("Resources", list(&rule.resources)),
        ("NonResourceURLs", list(&rule.non_resource_urls)),
        ("ResourceNames", list(&rule.resource_names)),
        ("Verbs", rule.verbs.as_slice()),
    ] {
        if !items.is_empty() {
            parts.push(format!("{label}:{}", go_quoted(items)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::ResourceAttributes;
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        PolicyRule {
            verbs: v(verbs),
            api_groups: Some(v(groups)),
            resources: Some(v(resources)),
            resource_names: (!names.is_empty()).then(|| v(names)),
            non_resource_urls: None,
        }
    }

    fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            non_resource_urls: Some(urls.iter().map(|x| x.to_string()).collect()),
            ..Default::default()
        }
    }

    fn request(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            path: String::new(),
            resource: Some(ResourceAttributes {
                group: group.into(),
                version: "v1".into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: "default".into(),
                name: name.into(),
            }),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(allows(&pods, &request("get", "", "pods", "", "p")));
        assert!(!allows(&pods, &request("delete", "", "pods", "", "p")));
        assert!(!allows(&pods, &request("get", "apps", "pods", "", "p")));
        // A subresource needs its own entry.
        assert!(!allows(&pods, &request("get", "", "pods", "log", "p")));
        let logs = rule(&["get"], &[""], &["pods/log"], &[]);
        assert!(allows(&logs, &request("get", "", "pods", "log", "p")));
        let any_status = rule(&["get"], &["*"], &["*/status"], &[]);
        assert!(allows(
            &any_status,
            &request("get", "apps", "deployments", "status", "d")
        ));
        assert!(!allows(
            &any_status,
            &request("get", "apps", "deployments", "", "d")
        ));
        let named = rule(&["get"], &[""], &["configmaps"], &["one"]);
        assert!(allows(&named, &request("get", "", "configmaps", "", "one")));
        assert!(!allows(
            &named,
            &request("get", "", "configmaps", "", "two")
        ));
        assert!(!allows(&named, &request("list", "", "configmaps", "", "")));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let r = url_rule(&["get"], &["/healthz", "/apis/*"]);
        let at = |path: &str| Attributes {
            verb: "get".into(),
            path: path.into(),
            resource: None,
        };
        assert!(allows(&r, &at("/healthz")));
        assert!(allows(&r, &at("/apis/apps/v1")));
        assert!(!allows(&r, &at("/apis")));
        assert!(!allows(&r, &at("/metrics")));
    }

    #[test]
    fn covers_finds_what_is_missing() {
        let owner = vec![
            rule(
                &["get", "list", "watch"],
                &[""],
                &["pods", "configmaps"],
                &[],
            ),
            rule(&["get"], &[""], &["secrets"], &["mine"]),
        ];
        assert!(covers(&owner, &[rule(&["get"], &[""], &["pods"], &[])]).is_ok());
        assert!(covers(&owner, &[rule(&["get"], &[""], &["secrets"], &["mine"])]).is_ok());
        let missing = covers(
            &owner,
            &[rule(
                &["get", "delete", "create"],
                &[""],
                &["pods", "secrets"],
                &[],
            )],
        )
        .expect_err("escalation");
        let text: Vec<String> = missing.iter().map(compact_string).collect();
        assert_eq!(
            text,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete" "create"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete" "create"]}"#,
            ]
        );
        let admin = vec![rule(&["*"], &["*"], &["*"], &[])];
        assert!(
            covers(
                &admin,
                &[rule(
                    &["escalate"],
                    &["rbac.authorization.k8s.io"],
                    &["roles"],
                    &[]
                )]
            )
            .is_ok()
        );
        assert!(covers(&admin, &[url_rule(&["get"], &["/metrics"])]).is_err());
    }
}
