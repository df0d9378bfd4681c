//! The generic registry: every verb implemented once over JSON objects, for any
//! [`Resource`]. Objects are stored as JSON without `metadata.resourceVersion`; it is set
//! on the way out from the datastore's mod revision, so it can never disagree with it.

use std::sync::Arc;

use serde_json::{Value, json};
use skiff_storage::{KeyValue, Revision, Store};

use super::managed::{self, Scope};
use super::names::check_labels;
use super::object::{
    copy_field, decode, encode, meta, meta_mut, meta_str, name_suffix, new_uid, now,
    parse_revision, set_resource_version, without_meta_and_status,
};
use super::selector::{FieldSelector, LabelSelector};
use super::validation::{FieldValidation, unknown_fields};
use super::watch_cache::WatchCache;
use super::{Resource, builtin};
use crate::status::{ApiError, FieldError, Subject};

/// Retries of an unconditional update or patch that lost a race.
pub(crate) const MAX_RETRIES: usize = 8;

#[derive(Clone)]
pub(crate) struct Registry {
    pub store: Arc<dyn Store>,
    pub service_cidr: super::service_ips::ServiceCidr,
    /// Serves LISTs at resourceVersion 0 and watches from memory.
    pub cache: Arc<WatchCache>,
    /// The global default PriorityClass, for Priority admission.
    pub(crate) default_class: Arc<super::priority::DefaultClass>,
    /// When admission last found no quota or limit range of a namespace in the
    /// datastore.
    pub(crate) live_lookups: Arc<super::quota::LiveLookups>,
}

/// `list` and `watch` parameters.
#[derive(Default)]
pub(crate) struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// Which part of an object a write may change: the object (its status is kept), or only
/// its status (the `/status` subresource).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Part {
    #[default]
    Main,
    Status,
    /// A namespace's `/finalize`: only `spec.finalizers` changes.
    Finalize,
    /// The server's own writes (binding a pod): spec and status together.
    Internal,
    /// A CertificateSigningRequest's `/approval`: its Approved/Denied conditions.
    Approval,
}

/// How a write is carried out.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub part: Part,
    /// Who writes, for `managedFields`: the `fieldManager` parameter, else the product
    /// of the User-Agent (as upstream). The server's own writes are not recorded.
    pub field_manager: Option<Arc<str>>,
    /// Server-side apply already worked out the ownership.
    pub applied: bool,
    /// Admission by who writes, run on the object about to be stored.
    pub admit: Option<Admit>,
    /// Who writes (a CertificateSigningRequest's requester is set from it on create).
    pub user: Option<Arc<crate::authn::UserInfo>>,
}

/// A check of the object about to be stored against who writes it (RBAC's escalation
/// prevention): the new object and, for an update, the stored one.
#[derive(Clone)]
pub(crate) struct Admit(
    #[allow(clippy::type_complexity)]
    pub  Arc<dyn Fn(&Value, Option<&Value>) -> Result<(), ApiError> + Send + Sync>,
);

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit")
    }
}

impl Part {
    /// The part of the object this write's ownership covers, and the subresource
    /// recorded with it.
    pub(crate) fn ownership(self, r: &Resource) -> (Scope, &'static str) {
        match self {
            Part::Status => (Scope::Status, "status"),
            Part::Approval => (Scope::Status, "approval"),
            Part::Main if r.status => (Scope::NotStatus, ""),
            _ => (Scope::All, ""),
        }
    }
}

/// Records who changed what (`metadata.managedFields`) on an ordinary write. A body
/// without managedFields keeps the live ones (clients that do not know them cannot
/// erase them); a body with them replaces them.
fn track_ownership(r: &Resource, opts: &WriteOptions, old: Option<&Value>, obj: &mut Value) {
    if opts.applied {
        return;
    }
    let incoming = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    // Nobody to record and nothing new: the ownership stays as stored.
    if opts.field_manager.is_none() && !incoming {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            match old.and_then(|o| o.pointer("/metadata/managedFields")) {
                Some(fields) => meta.insert("managedFields".into(), fields.clone()),
                None => meta.remove("managedFields"),
            };
        }
        return;
    }
    let mut managers = if incoming {
        managed::decode(obj).unwrap_or_default()
    } else {
        old.and_then(managed::decode).unwrap_or_default()
    };
    if let Some(manager) = &opts.field_manager {
        let (scope, subresource) = opts.part.ownership(r);
        let empty = json!({});
        let comparison =
            managed::Comparison::of(old.unwrap_or(&empty), obj, managed::Shape::of(r), scope);
        let key = managed::ManagerKey {
            manager: manager.to_string(),
            operation: "Update".into(),
            subresource: subresource.into(),
        };
        managed::track_update(&mut managers, &comparison, key, &r.api_version(), &now());
    }
    managed::encode(obj, &managers);
}

/// A written object and the warnings for the client.
pub(crate) struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    /// Annotations for the request's audit event (`pod-security.kubernetes.io/...`).
    pub audit: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    StrategicMerge,
}

pub(crate) fn subject<'a>(r: &'a Resource, name: &'a str) -> Subject<'a> {
    Subject {
        group: r.group,
        resource: r.plural,
        name,
    }
}

/// A registry over a fresh embedded store (kept while the directory lives), for tests.
#[cfg(test)]
pub(crate) fn test_registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = skiff_storage::embedded::Config::new(dir.path());
    config.compaction_interval = None;
    let store = skiff_storage::embedded::Embedded::open(&config).expect("store");
    let cidr = super::service_ips::ServiceCidr::parse("10.96.0.0/12").expect("cidr");
    (dir, Registry::new(Arc::new(store), cidr))
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, service_cidr: super::service_ips::ServiceCidr) -> Self {
        Registry {
            cache: Arc::new(WatchCache::new(store.clone())),
            default_class: Arc::default(),
            live_lookups: Arc::default(),
            store,
            service_cidr,
        }
    }

    pub async fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        decode(r, &self.stored(r, ns, name).await?)
    }

    /// The stored key-value of one object, or 404.
    pub(crate) async fn stored(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<KeyValue, ApiError> {
        let key = r.key(ns, name);
        let subj = subject(r, name);
        self.store
            .get(key.as_bytes(), None)
            .await
            .map_err(|e| ApiError::from_store(e, &subj))?
            .ok_or_else(|| ApiError::not_found(&subj))
    }

    /// Validation shared by create and update. Returns the object as the kind defines it
    /// (unknown fields dropped), adding a warning per unknown field unless `Strict`
    /// turns them into an error.
    fn validate(
        &self,
        r: &Resource,
        obj: &Value,
        fv: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> Result<Value, ApiError> {
        let name = meta_str(obj, "name").unwrap_or("");
        let mut errors = Vec::new();
        if name.is_empty() {
            errors.push(FieldError {
                field: "metadata.name".into(),
                reason: "FieldValueRequired",
                message: "Required value: name or generateName is required".into(),
            });
        } else if let Some(e) = r.name_rule.check("metadata.name", name) {
            errors.push(e);
        }
        if let Some(labels) = meta(obj)
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
        {
            errors.extend(check_labels(labels));
        }
        // apimachinery's ValidateOwnerReferences: one controller at most.
        let controllers: Vec<&str> = meta(obj)
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter(|o| o.get("controller") == Some(&Value::Bool(true)))
                    .filter_map(|o| o.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        if controllers.len() > 1 {
            errors.push(FieldError {
                field: "metadata.ownerReferences".into(),
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {:?}: Only one reference can have Controller set to true. Found \"true\" in references for {}",
                    controllers,
                    controllers.join(" and ")
                ),
            });
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(r.kind, r.group, name, errors));
        }
        let cannot = |detail: String| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {detail}",
                r.kind, r.version, r.kind
            ))
        };
        let normalized = (r.decode)(obj).map_err(cannot)?;
        if fv != FieldValidation::Ignore {
            let unknown: Vec<String> = unknown_fields(obj, &normalized)
                .into_iter()
                .map(|path| format!("unknown field \"{}\"", path.trim_start_matches('.')))
                .collect();
            if !unknown.is_empty() {
                if fv == FieldValidation::Strict {
                    return Err(cannot(format!(
                        "strict decoding error: {}",
                        unknown.join(", ")
                    )));
                }
                warnings.extend(unknown);
            }
        }
        let mut normalized = normalized;
        // Go's `omitempty`: an empty list of owners or finalizers is no list at all, so
        // removing the last one leaves the field out, as upstream serves it.
        if let Some(meta) = normalized
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            for list in ["ownerReferences", "finalizers"] {
                if meta
                    .get(list)
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    meta.remove(list);
                }
            }
        }
        Ok(normalized)
    }

    /// Checks the body's kind and apiVersion against the resource (filling them in when
    /// absent) and its namespace against the path's.
    /// `shape`: also decode it as the kind, refusing malformed shapes (skipped for the
    /// server's own writes, which change a stored object in known ways).
    fn check_body(
        &self,
        r: &Resource,
        ns: Option<&str>,
        obj: &mut Value,
        shape: bool,
    ) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let api_version = r.api_version();
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = json!(r.kind),
            Some(k) if k == r.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind of the object ({k}) does not match the resource ({})",
                    r.plural
                )));
            }
        }
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => obj["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        let meta = meta_mut(obj)?;
        match (ns, meta.get("namespace").and_then(Value::as_str)) {
            (Some(path), Some(body)) if !body.is_empty() && body != path => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (Some(path), _) => {
                meta.insert("namespace".into(), json!(path));
            }
            (None, _) => {
                meta.remove("namespace");
            }
        }
        if !shape {
            return Ok(());
        }
        // Malformed shapes are refused before defaulting touches them.
        (r.decode)(obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                r.kind, r.version, r.kind
            ))
        })?;
        Ok(())
    }

    /// Refuses new objects in a namespace that does not exist or is being deleted.
    async fn check_namespace(&self, r: &Resource, ns: &str, name: &str) -> Result<(), ApiError> {
        let namespaces = builtin("", "v1", "namespaces")?;
        let namespace = self.get(namespaces, None, ns).await?;
        if meta(&namespace).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                r.plural
            )));
        }
        Ok(())
    }

    pub async fn create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        self.check_body(r, ns, &mut obj, true)?;
        let meta = meta_mut(&mut obj)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            let name = format!("{prefix}{}", name_suffix());
            meta.insert("name".into(), json!(name));
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        if r.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if r.clear_status_on_create
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        (r.defaults)(&mut obj);
        if r.group == super::certificates::GROUP
            && let Some(user) = &opts.user
        {
            super::certificates::set_requester(&mut obj, user);
        }
        if r.group.is_empty() && r.plural == "pods" {
            if let Some(ns) = ns {
                self.admit_service_account(ns, &mut obj).await?;
            }
            self.admit_priority(&mut obj).await?;
        }
        if r.group.is_empty() && r.plural == "persistentvolumeclaims" {
            self.admit_default_storage_class(&mut obj).await?;
        }
        if r.group.is_empty()
            && matches!(r.plural, "pods" | "persistentvolumeclaims")
            && let Some(ns) = ns
        {
            self.admit_limit_ranges(r.plural, ns, &mut obj).await?;
        }
        let mut warnings = Vec::new();
        let mut audit = Vec::new();
        let mut obj = self.validate(r, &obj, opts.field_validation, &mut warnings)?;
        let errors = super::rules::check(r, &obj, None);
        if !errors.is_empty() {
            let name = meta_str(&obj, "name").unwrap_or_default();
            return Err(ApiError::invalid(r.kind, r.group, name, errors));
        }
        if let Some(admit) = &opts.admit {
            (admit.0)(&obj, None)?;
        }
        if let Some(ns) = ns {
            let (warned, annotations) = self.admit_pod_security(r, ns, &obj, None).await?;
            warnings.extend(warned);
            audit.extend(annotations);
        }
        track_ownership(r, &opts, None, &mut obj);
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if let Some(ns) = ns {
            self.check_namespace(r, ns, &name).await?;
            self.admit_quota(r, ns, &obj, opts.dry_run).await?;
        }
        if opts.dry_run {
            return Ok(Written {
                object: obj,
                warnings,
                audit,
            });
        }
        let key = r.key(ns, &name);
        let reserved = if r.allocates_ips {
            Some(self.allocate_service(&mut obj, &key).await?)
        } else {
            None
        };
        let revision = match self.store.create(key.as_bytes(), encode(r, &obj)?).await {
            Ok(revision) => revision,
            Err(e) => {
                if let Some(reserved) = &reserved {
                    self.release(reserved, &key).await;
                }
                return Err(ApiError::from_store(e, &subject(r, &name)));
            }
        };
        set_resource_version(&mut obj, revision);
        Ok(Written {
            object: obj,
            warnings,
            audit,
        })
    }

    /// Replaces an object. A body with a resourceVersion is a compare-and-swap on it;
    /// without one the update is unconditional (retried on races).
    pub async fn update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        self.check_body(r, ns, &mut obj, true)?;
        match meta_str(&obj, "name") {
            Some(n) if n == name => {}
            Some(n) if !n.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {
                meta_mut(&mut obj)?.insert("name".into(), json!(name));
            }
        }
        let expected = match meta_str(&obj, "resourceVersion").filter(|v| !v.is_empty()) {
            Some(rv) => Some(parse_revision(rv)?),
            None => None,
        };
        self.guaranteed_update(r, ns, name, expected, opts, |_| Ok(obj.clone()))
            .await
    }

    pub async fn patch(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &[u8],
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        let patch: Value = serde_json::from_slice(patch)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        self.guaranteed_update(r, ns, name, None, opts, |current| {
            let mut obj = current.clone();
            match patch_type {
                PatchType::Json => {
                    let ops: json_patch::Patch =
                        serde_json::from_value(patch.clone()).map_err(|e| {
                            ApiError::bad_request(format!("error decoding json patch: {e}"))
                        })?;
                    json_patch::patch(&mut obj, &ops).map_err(|e| {
                        ApiError::invalid(
                            r.kind,
                            r.group,
                            name,
                            vec![FieldError {
                                field: String::new(),
                                reason: "FieldValueInvalid",
                                message: format!("the json patch could not be applied: {e}"),
                            }],
                        )
                    })?;
                }
                PatchType::Merge => json_patch::merge(&mut obj, &patch),
                PatchType::StrategicMerge => {
                    obj = super::smp::apply(&obj, &patch, r.patch_strategies)
                        .map_err(|e| ApiError::bad_request(e.0))?;
                }
            }
            if meta_str(&obj, "name") != Some(name) {
                return Err(ApiError::bad_request(
                    "metadata.name cannot be changed by a patch",
                ));
            }
            Ok(obj)
        })
        .await
    }

    /// Reads, transforms and writes back with compare-and-swap, retrying lost races when
    /// the caller did not pin a resourceVersion.
    pub(crate) async fn guaranteed_update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        expected: Option<Revision>,
        opts: WriteOptions,
        transform: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Written, ApiError> {
        let key = r.key(ns, name);
        let subj = subject(r, name);
        for _ in 0..MAX_RETRIES {
            let current = self.stored(r, ns, name).await?;
            if expected.is_some_and(|e| e != current.mod_revision) {
                return Err(ApiError::conflict(&subj));
            }
            let old = decode(r, &current)?;
            let mut obj = transform(&old)?;
            // A resourceVersion in the result (a PUT body's, or one a patch sets) is a
            // precondition, as upstream: optimistic locking through patches.
            if meta_str(&obj, "resourceVersion")
                .is_some_and(|rv| !rv.is_empty() && rv != current.mod_revision.to_string())
            {
                return Err(ApiError::conflict(&subj));
            }
            self.check_body(r, ns, &mut obj, opts.part != Part::Internal)?;
            // What the server owns cannot be changed by a client.
            let old_meta = meta(&old).cloned().unwrap_or_default();
            let meta = meta_mut(&mut obj)?;
            if let Some(uid) = meta.get("uid").and_then(Value::as_str)
                && Some(uid) != old_meta.get("uid").and_then(Value::as_str)
            {
                return Err(ApiError::conflict(&subj));
            }
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generateName",
            ] {
                match old_meta.get(field) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            (r.defaults)(&mut obj);
            if r.allocates_ips {
                Registry::carry_over_allocations(&old, &mut obj, name)?;
            }
            match opts.part {
                // A kind with a status subresource keeps its status on main updates; a
                // namespace's finalizers change only through /finalize.
                Part::Main if r.status => {
                    copy_field(&old, &mut obj, "status");
                    if r.kind == "Namespace" && obj.get("spec").is_some_and(Value::is_object) {
                        obj["spec"]["finalizers"] = old
                            .pointer("/spec/finalizers")
                            .cloned()
                            .unwrap_or(json!([]));
                    }
                }
                Part::Main | Part::Internal => {}
                Part::Finalize => {
                    let finalizers = obj.pointer("/spec/finalizers").cloned();
                    obj = old.clone();
                    obj["spec"]["finalizers"] = finalizers.unwrap_or(json!([]));
                }
                // A status update changes the status and nothing else (an approval,
                // the approval conditions of it).
                Part::Status | Part::Approval => {
                    let status = obj.get("status").cloned();
                    obj = old.clone();
                    match status {
                        Some(status) => obj["status"] = status,
                        None => {
                            if let Some(o) = obj.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
            }
            if r.group == super::certificates::GROUP {
                let part = match opts.part {
                    Part::Status => super::certificates::CsrPart::Status,
                    Part::Approval => super::certificates::CsrPart::Approval,
                    _ => super::certificates::CsrPart::Main,
                };
                super::certificates::prepare_update(part, &old, &mut obj);
            }
            // metadata.generation counts changes to everything but metadata and status.
            let generation = old.pointer("/metadata/generation").cloned();
            let bumped =
                r.generation && without_meta_and_status(&obj) != without_meta_and_status(&old);
            let meta = meta_mut(&mut obj)?;
            match (generation, bumped) {
                (Some(g), true) => {
                    meta.insert("generation".into(), json!(g.as_i64().unwrap_or(0) + 1))
                }
                (Some(g), false) => meta.insert("generation".into(), g),
                (None, _) => meta.remove("generation"),
            };
            let mut warnings = Vec::new();
            let mut audit = Vec::new();
            set_resource_version(&mut obj, current.mod_revision);
            // The server's own writes (a binding, an eviction's budget) change a stored,
            // already valid object in known ways: no decode round trip.
            let mut obj = if opts.part == Part::Internal {
                obj
            } else {
                self.validate(r, &obj, opts.field_validation, &mut warnings)?
            };
            // (A certificate request's status and approval have rules of their own.)
            if opts.part == Part::Main || r.group == super::certificates::GROUP {
                // Compared with the stored object as today's defaults would have it, so
                // an object stored by an older server is not "changed" by new defaults.
                let mut before = old.clone();
                (r.defaults)(&mut before);
                let errors = super::rules::check(r, &obj, Some(&before));
                if !errors.is_empty() {
                    return Err(ApiError::invalid(r.kind, r.group, name, errors));
                }
            }
            if opts.part != Part::Internal
                && let Some(admit) = &opts.admit
            {
                (admit.0)(&obj, Some(&old))?;
            }
            if opts.part == Part::Main
                && let Some(ns) = ns
            {
                let (warned, annotations) =
                    self.admit_pod_security(r, ns, &obj, Some(&old)).await?;
                warnings.extend(warned);
                audit.extend(annotations);
            }
            track_ownership(r, &opts, Some(&old), &mut obj);
            if obj == old {
                // Nothing changed: no write, no new resourceVersion (as upstream).
                return Ok(Written {
                    object: old,
                    warnings,
                    audit,
                });
            }
            if opts.dry_run {
                return Ok(Written {
                    object: obj,
                    warnings,
                    audit,
                });
            }
            if self.finalized(&obj) {
                self.remove(r, ns, name, current.mod_revision).await?;
                return Ok(Written {
                    object: obj,
                    warnings,
                    audit,
                });
            }
            // Services: reserve what the new spec gained before storing it; release what
            // it dropped only once it is stored.
            let (added, removed) = if r.allocates_ips {
                self.update_service_allocations(&old, &mut obj, &key)
                    .await?
            } else {
                Default::default()
            };
            let bytes = encode(r, &obj)?;
            match self
                .store
                .update(key.as_bytes(), bytes, current.mod_revision)
                .await
            {
                Ok(revision) => {
                    self.release(&removed, &key).await;
                    set_resource_version(&mut obj, revision);
                    return Ok(Written {
                        object: obj,
                        warnings,
                        audit,
                    });
                }
                Err(skiff_storage::Error::Conflict { .. }) if expected.is_none() => {
                    self.release(&added, &key).await;
                    continue;
                }
                Err(e) => {
                    self.release(&added, &key).await;
                    return Err(ApiError::from_store(e, &subj));
                }
            }
        }
        Err(ApiError::conflict(&subj))
    }

    /// The `kubernetes` Service in `default` at the first service address, and its
    /// Endpoints pointing at this server (refreshed at every start: the port may change).
    pub async fn ensure_kubernetes_service(
        &self,
        addr: std::net::SocketAddr,
        ip: std::net::Ipv4Addr,
    ) -> Result<(), ApiError> {
        let services = builtin("", "v1", "services")?;
        let endpoints = builtin("", "v1", "endpoints")?;
        let port = addr.port();
        let service = json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        });
        match self.get(services, Some("default"), "kubernetes").await {
            Ok(_) => {
                let patch = json!({"spec": {"ports": service["spec"]["ports"]}});
                self.patch(
                    services,
                    Some("default"),
                    "kubernetes",
                    PatchType::Merge,
                    patch.to_string().as_bytes(),
                    WriteOptions::default(),
                )
                .await?;
            }
            Err(ApiError { code: 404, .. }) => {
                self.create(services, Some("default"), service, WriteOptions::default())
                    .await?;
            }
            Err(e) => return Err(e),
        }
        let advertise = if addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        let subsets = json!([{"addresses": [{"ip": advertise.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
        let body = json!({"metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}, "subsets": subsets});
        match self
            .create(endpoints, Some("default"), body, WriteOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(ApiError { code: 409, .. }) => {
                let patch = json!({"subsets": subsets});
                self.patch(
                    endpoints,
                    Some("default"),
                    "kubernetes",
                    PatchType::Merge,
                    patch.to_string().as_bytes(),
                    WriteOptions::default(),
                )
                .await
                .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a namespace at start-up if it is missing.
    pub async fn ensure_namespace(&self, name: &str) -> Result<(), ApiError> {
        let namespaces = builtin("", "v1", "namespaces")?;
        match self
            .create(
                namespaces,
                None,
                json!({"metadata": {"name": name}}),
                WriteOptions::default(),
            )
            .await
        {
            Ok(_) | Err(ApiError { code: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_object_may_have_one_controller_only() {
        let (_dir, registry) = test_registry();
        registry
            .ensure_namespace("default")
            .await
            .expect("namespace");
        let configmaps = super::super::find("", "v1", "configmaps").expect("configmaps");
        let owner = |name: &str| {
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                   "uid": format!("uid-{name}"), "controller": true})
        };
        let two = json!({"metadata": {"name": "cm", "ownerReferences": [owner("a"), owner("b")]}});
        let Err(err) = registry
            .create(configmaps, Some("default"), two, WriteOptions::default())
            .await
        else {
            panic!("two controllers were accepted");
        };
        assert_eq!(err.code, 422);
        assert!(
            err.message
                .contains("Only one reference can have Controller set to true"),
            "{}",
            err.message
        );
        let one = json!({"metadata": {"name": "cm", "ownerReferences": [owner("a")]}});
        registry
            .create(configmaps, Some("default"), one, WriteOptions::default())
            .await
            .expect("one controller");
    }
}
