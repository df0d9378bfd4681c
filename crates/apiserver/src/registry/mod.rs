//! The resources this server serves, and the one generic store behind all of them.
//!
//! A resource is a row in [`CATALOG`] (see `catalog.rs`): its names, its scope, and a
//! small strategy (defaulting, the name rule, patch strategies, printed columns, a typed
//! decode through `k8s-openapi` that refuses malformed objects). Every verb's logic
//! lives once, in [`store`].

pub(crate) mod apply;
mod catalog;
pub(crate) mod certificates;
mod columns;
mod default_storage_class;
mod defaults;
pub(crate) mod delete;
mod events;
mod limit_range;
mod list;
pub(crate) mod managed;
mod names;
pub(crate) mod object;
mod pod_security;
mod priority;
mod quota;
mod rules;
pub(crate) mod selector;
mod service_account;
pub mod service_ips;
pub(crate) mod smp;
pub(crate) mod store;
pub(crate) mod subresources;
pub(crate) mod validation;
pub(crate) mod watch;
pub(crate) mod watch_cache;

use serde_json::Value;

pub(crate) use catalog::CATALOG;
pub(crate) use names::NameRule;

use crate::table::Column;

pub(crate) struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub name_rule: NameRule,
    /// Fills in defaults on every write.
    pub defaults: fn(&mut Value),
    /// List strategies for strategic merge patch, beyond ObjectMeta's.
    pub patch_strategies: smp::Strategies,
    /// The columns `kubectl get` prints after NAME; AGE is added at the end unless
    /// listed (as `table::AGE`) where upstream prints it.
    pub columns: &'static [Column],
    /// Upstream hides the NAME column of this kind (events).
    pub hide_name: bool,
    /// Has a `/status` subresource: main updates keep the status, status updates change
    /// only the status.
    pub status: bool,
    /// `metadata.generation` counts changes outside metadata and status.
    pub generation: bool,
    /// A client cannot create the object with a status (its controllers report it).
    pub clear_status_on_create: bool,
    /// Has a `/scale` subresource (autoscaling/v1 Scale over `spec.replicas`).
    pub scale: bool,
    /// Deletion waits for a grace period (pods: the kubelet stops them, then deletes).
    pub graceful_deletion: bool,
    /// Gets a ClusterIP and NodePorts from the server (Services).
    pub allocates_ips: bool,
    /// A completed delete answers with the deleted object rather than a Status (pods,
    /// services, as upstream).
    pub returns_deleted_object: bool,
    /// Another version's storage this one shares (`/registry/PLURAL/`), with the
    /// conversions to and from the stored form.
    pub storage_prefix: Option<&'static str>,
    pub to_storage: Option<fn(Value) -> Value>,
    pub from_storage: Option<fn(Value) -> Value>,
    /// Decodes the object as its typed Kubernetes kind and encodes it again: the error
    /// says what is malformed; the result lacks any field the kind does not have.
    pub decode: fn(&Value) -> Result<Value, String>,
    /// Adds the kind's OpenAPI schema (and every schema it uses) to a generator and
    /// returns the reference to it.
    pub schema: fn(&mut schemars::SchemaGenerator) -> Value,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Where objects live in the datastore: `/registry/[GROUP/]PLURAL/[NS/]NAME`.
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        let mut key = String::from("/registry/");
        if let Some(prefix) = self.storage_prefix {
            key = prefix.to_string();
        } else {
            if !self.group.is_empty() {
                key.push_str(self.group);
                key.push('/');
            }
            key.push_str(self.plural);
            key.push('/');
        }
        if let Some(ns) = namespace {
            key.push_str(ns);
            key.push('/');
        }
        key
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        self.key_prefix(namespace) + name
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// A subresource as discovery lists it.
pub(crate) struct Subresource {
    pub name: &'static str,
    /// Group, version and kind of what it reads and writes.
    pub kind: (&'static str, &'static str, &'static str),
    pub verbs: &'static [&'static str],
}

impl Resource {
    pub fn subresources(&self) -> Vec<Subresource> {
        const GPU: &[&str] = &["get", "patch", "update"];
        let mut out = Vec::new();
        if self.status {
            out.push(Subresource {
                name: "status",
                kind: (self.group, self.version, self.kind),
                verbs: GPU,
            });
        }
        if self.scale {
            out.push(Subresource {
                name: "scale",
                kind: ("autoscaling", "v1", "Scale"),
                verbs: GPU,
            });
        }
        match self.plural {
            "pods" if self.group.is_empty() => {
                out.push(Subresource {
                    name: "binding",
                    kind: ("", "v1", "Binding"),
                    verbs: &["create"],
                });
                out.push(Subresource {
                    name: "eviction",
                    kind: ("policy", "v1", "Eviction"),
                    verbs: &["create"],
                });
                out.push(Subresource {
                    name: "log",
                    kind: ("", "v1", "Pod"),
                    verbs: &["get"],
                });
                for (name, kind) in [
                    ("exec", "PodExecOptions"),
                    ("attach", "PodAttachOptions"),
                    ("portforward", "PodPortForwardOptions"),
                ] {
                    out.push(Subresource {
                        name,
                        kind: ("", "v1", kind),
                        verbs: &["create", "get"],
                    });
                }
            }
            "nodes" if self.group.is_empty() => out.push(Subresource {
                name: "proxy",
                kind: ("", "v1", "NodeProxyOptions"),
                verbs: &["create", "delete", "get", "patch", "update"],
            }),
            "serviceaccounts" if self.group.is_empty() => out.push(Subresource {
                name: "token",
                kind: ("authentication.k8s.io", "v1", "TokenRequest"),
                verbs: &["create"],
            }),
            "certificatesigningrequests" => out.push(Subresource {
                name: "approval",
                kind: (self.group, self.version, self.kind),
                verbs: GPU,
            }),
            "namespaces" if self.group.is_empty() => out.push(Subresource {
                name: "finalize",
                kind: ("", "v1", "Namespace"),
                verbs: &["update"],
            }),
            _ => {}
        }
        out
    }
}

pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    CATALOG
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// A kind the server itself relies on (namespaces, services, ...): always in the catalog.
pub(crate) fn builtin(
    group: &str,
    version: &str,
    plural: &str,
) -> Result<&'static Resource, crate::status::ApiError> {
    find(group, version, plural).ok_or_else(|| {
        crate::status::ApiError::internal(format!("{plural} missing from the catalog"))
    })
}
