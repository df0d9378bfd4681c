//! The resources this server serves, and the one generic store behind all of them.
//!
//! A resource is a row in [`CATALOG`]: its names, its scope, and a small strategy
//! (defaulting, the name rule, a typed decode through `k8s-openapi` that refuses
//! malformed objects). Every verb's logic lives once, in [`store`].

mod names;
pub(crate) mod selector;
pub(crate) mod smp;
pub(crate) mod store;
pub(crate) mod validation;
pub(crate) mod watch;

use serde_json::{Value, json};

pub(crate) use names::NameRule;

use crate::table::{self, Column};

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
    /// The columns `kubectl get` prints between NAME and AGE.
    pub columns: &'static [Column],
    /// Decodes the object as its typed Kubernetes kind and encodes it again: the error
    /// says what is malformed; the result lacks any field the kind does not have.
    pub decode: fn(&Value) -> Result<Value, String>,
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
        if !self.group.is_empty() {
            key.push_str(self.group);
            key.push('/');
        }
        key.push_str(self.plural);
        key.push('/');
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

fn decode_as<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &Value,
) -> Result<Value, String> {
    let typed = serde_json::from_value::<T>(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn no_defaults(_: &mut Value) {}

fn namespace_defaults(obj: &mut Value) {
    if obj.pointer("/spec/finalizers").is_none() {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
    }
    obj["status"] = json!({"phase": "Active"});
}

/// `stringData` is a write-only convenience: merged into `data` (base64) and dropped,
/// as upstream does on every write.
fn secret_defaults(obj: &mut Value) {
    use base64::Engine;
    if obj
        .get("type")
        .is_none_or(|t| t.as_str().is_none_or(str::is_empty))
    {
        obj["type"] = json!("Opaque");
    }
    let string_data = obj.as_object_mut().and_then(|o| o.remove("stringData"));
    if let Some(Value::Object(string_data)) = string_data {
        if !obj.get("data").is_some_and(Value::is_object) {
            obj["data"] = json!({});
        }
        for (key, value) in string_data {
            if let Some(text) = value.as_str() {
                obj["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
    }
}

pub(crate) static CATALOG: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        name_rule: NameRule::DnsLabel,
        defaults: namespace_defaults,
        patch_strategies: &[],
        columns: &[Column {
            name: "Status",
            kind: "string",
            description: "The status of the namespace",
            priority: 0,
            cell: table::namespace_phase,
        }],
        decode: decode_as::<k8s_openapi::api::core::v1::Namespace>,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        name_rule: NameRule::DnsSubdomain,
        defaults: no_defaults,
        patch_strategies: &[],
        columns: &[Column {
            name: "Data",
            kind: "string",
            description: "Number of data entries",
            priority: 0,
            cell: table::data_count,
        }],
        decode: decode_as::<k8s_openapi::api::core::v1::ConfigMap>,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        name_rule: NameRule::DnsSubdomain,
        defaults: secret_defaults,
        patch_strategies: &[],
        columns: &[
            Column {
                name: "Type",
                kind: "string",
                description: "The type of the secret",
                priority: 0,
                cell: table::secret_type,
            },
            Column {
                name: "Data",
                kind: "string",
                description: "Number of data entries",
                priority: 0,
                cell: table::data_count,
            },
        ],
        decode: decode_as::<k8s_openapi::api::core::v1::Secret>,
    },
];

pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    CATALOG
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}
