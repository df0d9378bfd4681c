//! Routing: fixed endpoints (version, health, discovery) and one handler for every
//! resource path, which parses the request (see [`crate::request`]), checks it against
//! the catalog and calls the generic registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use skiff_storage::Store;

use crate::registry::delete::DeleteOptions;
use crate::registry::store::{Part, Registry, WriteOptions, Written};
use crate::registry::subresources::ScaleChange;
use crate::registry::validation::FieldValidation;
use crate::registry::watch::{self, WatchOptions};
use crate::registry::{self as reg, Resource};
use crate::request::{self, Verb};
use crate::status::{ApiError, FieldError};
use crate::{Error, KUBERNETES_VERSION, discovery};

mod params;
pub(crate) use params::json_body;
use params::{
    APPLY_PATCH, check_list_versions, content_type, delete_options, field_manager, list_options,
    patch_type, read_body, yaml_or_json,
};

/// Namespaces every cluster has from its first start.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

#[derive(Clone)]
pub(crate) struct State {
    pub(crate) registry: Registry,
    pub(crate) kubelets: crate::kubelet::Client,
    pub(crate) tokens: Arc<crate::tokens::Issuer>,
    pub(crate) authorizer: crate::authz::Authorizer,
    pub(crate) static_tokens: Arc<crate::authn::StaticTokens>,
    pub(crate) anonymous: bool,
    pub(crate) auditor: Option<Arc<crate::audit::Auditor>>,
}

impl State {
    pub async fn new(
        store: Arc<dyn Store>,
        config: &crate::Config,
        addr: std::net::SocketAddr,
        kubelets: crate::kubelet::Client,
        tokens: crate::tokens::Issuer,
    ) -> Result<Self, Error> {
        let registry = Registry::new(store, config.service_cidr);
        let fail = |e: ApiError| Error::Bootstrap(e.message);
        for ns in SYSTEM_NAMESPACES {
            registry.ensure_namespace(ns).await.map_err(fail)?;
        }
        registry.ensure_priority_classes().await.map_err(fail)?;
        registry
            .ensure_kubernetes_service(addr, config.service_cidr.nth(1))
            .await
            .map_err(fail)?;
        crate::authz::policy::ensure(&registry)
            .await
            .map_err(fail)?;
        let index = crate::authz::rbac::Index::start(registry.cache.clone()).await;
        let graph = if config
            .authorization_modes
            .contains(&crate::authz::Mode::Node)
        {
            Some(crate::authz::graph::Graph::start(registry.cache.clone()).await)
        } else {
            None
        };
        let static_tokens = match &config.token_auth_file {
            Some(path) => crate::authn::StaticTokens::load(path)?,
            None => crate::authn::StaticTokens::default(),
        };
        let auditor = match &config.audit_log_path {
            Some(log) => Some(
                crate::audit::Auditor::start(log, config.audit_policy_file.as_deref())
                    .map_err(Error::Bootstrap)?,
            ),
            None => None,
        };
        Ok(State {
            auditor,
            registry,
            kubelets,
            tokens: Arc::new(tokens),
            authorizer: crate::authz::Authorizer::new(
                config.authorization_modes.clone(),
                index,
                graph,
            ),
            static_tokens: Arc::new(static_tokens),
            anonymous: config.anonymous_auth,
        })
    }
}

/// Sweeps expired events every minute (or a quarter of the TTL); the first sweep is
/// `run`'s, before the server reports ready.
/// How often leaked or missing Service allocations are repaired (upstream: 3 minutes).
const REPAIR_PERIOD: Duration = Duration::from_secs(180);

pub(crate) async fn repair_allocations(state: State) {
    let mut suspects = crate::registry::service_ips::Suspects::default();
    let mut tick = tokio::time::interval(REPAIR_PERIOD);
    loop {
        tick.tick().await;
        if let Err(e) = state.registry.repair_allocations(&mut suspects).await {
            tracing::warn!(error = %e.message, "repairing service allocations");
        }
    }
}

pub(crate) async fn expire_events(state: State, ttl: Duration) {
    let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        match state.registry.expire_events(ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "expired events"),
            Err(e) => tracing::warn!(error = %e.message, "expiring events"),
        }
    }
}

pub(crate) fn router(state: State) -> Router {
    let metrics = crate::metrics::Metrics::new();
    let metrics_handle = metrics.clone();
    let api = Router::new()
        .route("/version", get(version))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(readyz))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/openid/v1/jwks", get(openid_keys))
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            axum::routing::post(crate::authn::self_subject_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            axum::routing::post(crate::authn::token_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            axum::routing::post(crate::authz::reviews::self_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            axum::routing::post(crate::authz::reviews::subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews",
            axum::routing::post(crate::authz::reviews::local_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            axum::routing::post(crate::authz::reviews::self_subject_rules_review),
        )
        .route(
            "/metrics",
            get(move || crate::metrics::serve(axum::extract::State(metrics_handle))),
        )
        .fallback(resource)
        // Layers run outside in: authentication, the audit log, then authorization.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::authz::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.auditor.clone(),
            crate::audit::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::authn::layer,
        ))
        .with_state(state);
    api.layer(axum::middleware::from_fn_with_state(
        metrics,
        crate::metrics::record,
    ))
}

async fn openid_configuration(
    axum::extract::State(state): axum::extract::State<State>,
) -> Json<Value> {
    Json(state.tokens.discovery())
}

async fn openid_keys(axum::extract::State(state): axum::extract::State<State>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        Json(state.tokens.jwks()),
    )
        .into_response()
}

async fn version() -> Json<Value> {
    let (major, minor) = KUBERNETES_VERSION;
    Json(json!({
        "major": major,
        "minor": minor,
        "gitVersion": skiff_api::git_version(),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    }))
}

async fn health(Query(q): Query<HashMap<String, String>>) -> Response {
    checks(&q, &[("ping", true)], "healthz")
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<State>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let store_ok = state.registry.store.health().await.is_ok();
    checks(&q, &[("ping", true), ("etcd", store_ok)], "readyz")
}

/// The health endpoints' text format, with `?verbose` listing each check.
fn checks(q: &HashMap<String, String>, results: &[(&str, bool)], what: &str) -> Response {
    let ok = results.iter().all(|(_, ok)| *ok);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let body = if q.contains_key("verbose") {
        let mut lines: String = results
            .iter()
            .map(|(name, ok)| {
                format!(
                    "[{}]{name} {}\n",
                    if *ok { "+" } else { "-" },
                    if *ok { "ok" } else { "failed" }
                )
            })
            .collect();
        lines += &format!("{what} check {}\n", if ok { "passed" } else { "failed" });
        lines
    } else if ok {
        "ok".into()
    } else {
        format!("{what} check failed")
    };
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn resource(
    axum::extract::State(state): axum::extract::State<State>,
    request: Request,
) -> Response {
    match serve_resource(&state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn serve_resource(state: &State, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let watch_param = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let Some(info) = request::parse(&parts.method, &path, watch_param) else {
        return discovery_response(&path, &parts.headers).ok_or_else(ApiError::path_not_found);
    };
    let r = reg::find(&info.group, &info.version, &info.resource)
        .ok_or_else(ApiError::path_not_found)?;
    if info.namespace.is_some() && !r.namespaced {
        return Err(ApiError::path_not_found());
    }
    // A namespaced kind is only listed and watched across namespaces, never written.
    if r.namespaced && info.namespace.is_none() && !matches!(info.verb, Verb::List | Verb::Watch) {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    admit_node_delete(state, r, &parts, &info).await?;
    let part = match info.subresource.as_deref() {
        None => Part::Main,
        Some("status")
            if r.status && matches!(info.verb, Verb::Get | Verb::Update | Verb::Patch) =>
        {
            Part::Status
        }
        Some("finalize") if r.plural == "namespaces" && info.verb == Verb::Update => Part::Finalize,
        Some("approval")
            if r.plural == "certificatesigningrequests"
                && matches!(info.verb, Verb::Get | Verb::Update | Verb::Patch) =>
        {
            Part::Approval
        }
        Some(kind @ ("exec" | "attach"))
            if r.plural == "pods" && matches!(info.verb, Verb::Get | Verb::Create) =>
        {
            let kind = kind.to_string();
            let ns = info.namespace.clone().unwrap_or_default();
            let name = info.name.clone().unwrap_or_default();
            let request = Request::from_parts(parts, body);
            return crate::kubelet::pod_stream(state, &ns, &name, &kind, request).await;
        }
        Some("portforward")
            if r.plural == "pods" && matches!(info.verb, Verb::Get | Verb::Create) =>
        {
            let ns = info.namespace.clone().unwrap_or_default();
            let name = info.name.clone().unwrap_or_default();
            let request = Request::from_parts(parts, body);
            return crate::kubelet::pod_port_forward(state, &ns, &name, request).await;
        }
        Some("proxy") if r.plural == "nodes" && info.verb == Verb::Get => {
            let name = info.name.as_deref().unwrap_or_default();
            let path = info.proxy_path.as_deref().unwrap_or_default();
            let query = parts.uri.query().unwrap_or_default();
            return crate::kubelet::node_proxy(state, name, path, query).await;
        }
        Some("log") if r.plural == "pods" && info.verb == Verb::Get => {
            let ns = info.namespace.as_deref().unwrap_or_default();
            let name = info.name.as_deref().unwrap_or_default();
            return crate::kubelet::pod_log(state, ns, name, &query).await;
        }
        Some("scale" | "binding" | "eviction" | "token") => {
            return subresource(state, r, &info, &parts.headers, body, &query).await;
        }
        Some(_) => return Err(ApiError::path_not_found()),
    };
    let ns = info.namespace.as_deref();
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let write = WriteOptions {
        dry_run,
        part,
        field_validation: FieldValidation::parse(query.get("fieldValidation").map(String::as_str))
            .map_err(ApiError::bad_request)?,
        field_manager: Some(field_manager(&query, &parts.headers)?),
        applied: false,
        admit: admission(state, r, &parts, &info),
        user: parts
            .extensions
            .get::<crate::authn::UserInfo>()
            .cloned()
            .map(Arc::new),
    };
    let registry = &state.registry;
    let as_table = crate::table::wanted(&parts.headers);
    let include =
        crate::table::IncludeObject::parse(query.get("includeObject").map(String::as_str));
    match info.verb {
        Verb::Get => {
            let name = info.name.as_deref().unwrap_or_default();
            if r.namespaced && ns.is_none() {
                return Err(ApiError::path_not_found());
            }
            let obj = registry.get(r, ns, name).await?;
            ok(if as_table {
                crate::table::from_object(r, &obj, include)
            } else {
                obj
            })
        }
        Verb::List => {
            let opts = list_options(r, &query)?;
            check_list_versions(&opts)?;
            if as_table {
                let list = registry.list(r, ns, &opts).await?;
                return ok(crate::table::from_list(r, &list, include));
            }
            let body = registry.list_body(r, ns, &opts).await?;
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Verb::Watch => {
            watch_response(
                registry,
                r,
                info.namespace.clone(),
                info.name.as_deref(),
                &query,
                as_table.then_some(include),
            )
            .await
        }
        Verb::Create => {
            if info.name.is_some() || (r.namespaced && ns.is_none()) {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            let obj = json_body(&parts.headers, body).await?;
            let done = registry.create(r, ns, obj, write).await?;
            Ok(written_rbac_aware(state, r, StatusCode::CREATED, done).await)
        }
        Verb::Update => {
            let name = info.name.as_deref().ok_or_else(|| {
                ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                )
            })?;
            let obj = json_body(&parts.headers, body).await?;
            let done = registry.update(r, ns, name, obj, write).await?;
            Ok(written_rbac_aware(state, r, StatusCode::OK, done).await)
        }
        Verb::Patch => {
            let name = info.name.as_deref().ok_or_else(|| {
                ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                )
            })?;
            if content_type(&parts.headers) == APPLY_PATCH {
                let manager = query
                    .get("fieldManager")
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "PatchOptions",
                            "meta.k8s.io",
                            "",
                            vec![FieldError {
                                field: "fieldManager".into(),
                                reason: "FieldValueRequired",
                                message: "Required value: is required for apply patch".into(),
                            }],
                        )
                    })?;
                let force = query.get("force").is_some_and(|f| f == "true");
                let config = yaml_or_json(&read_body(body).await?)?;
                let (done, created) = registry
                    .apply(r, ns, name, config, manager, force, write)
                    .await?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok(written_rbac_aware(state, r, code, done).await);
            }
            if query.contains_key("force") {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    vec![FieldError {
                        field: "force".into(),
                        reason: "FieldValueForbidden",
                        message: "Forbidden: may not be specified for non-apply patch".into(),
                    }],
                ));
            }
            let patch_type = patch_type(&parts.headers)?;
            let bytes = read_body(body).await?;
            let done = registry
                .patch(r, ns, name, patch_type, &bytes, write)
                .await?;
            Ok(written_rbac_aware(state, r, StatusCode::OK, done).await)
        }
        Verb::Delete => {
            let name = info.name.as_deref().unwrap_or_default();
            let protobuf = crate::proto::is_protobuf(&content_type(&parts.headers));
            let options = delete_options(&query, read_body(body).await?, protobuf)?;
            ok(registry
                .delete(
                    r,
                    ns,
                    name,
                    &DeleteOptions {
                        dry_run: dry_run || options.dry_run,
                        ..options
                    },
                )
                .await?)
        }
        Verb::DeleteCollection => ok(registry
            .delete_collection(r, ns, &list_options(r, &query)?, dry_run)
            .await?),
    }
}

/// Admission by who writes: RBAC's escalation check on roles and bindings, and
/// NodeRestriction on what a kubelet writes.
fn admission(
    state: &State,
    r: &'static Resource,
    parts: &axum::http::request::Parts,
    info: &request::RequestInfo,
) -> Option<crate::registry::store::Admit> {
    let user = parts
        .extensions
        .get::<crate::authn::UserInfo>()
        .cloned()
        .unwrap_or_else(crate::authn::UserInfo::anonymous);
    let namespace = info.namespace.clone().unwrap_or_default();
    if r.group == crate::authz::rbac::GROUP {
        let authorizer = state.authorizer.clone();
        return Some(crate::registry::store::Admit(Arc::new(move |obj, old| {
            crate::authz::escalation::check(&authorizer, &user, r.plural, &namespace, obj, old)
        })));
    }
    if r.group == crate::registry::certificates::GROUP {
        let authorizer = state.authorizer.clone();
        let subresource = info.subresource.clone().unwrap_or_default();
        return Some(crate::registry::store::Admit(Arc::new(move |obj, old| {
            crate::registry::certificates::admit(&authorizer, &user, &subresource, obj, old)
        })));
    }
    let node = crate::authz::node::node_of(&user)?.to_string();
    if !r.group.is_empty() || !matches!(r.plural, "pods" | "nodes") {
        return None;
    }
    let subresource = info.subresource.clone().unwrap_or_default();
    Some(crate::registry::store::Admit(Arc::new(move |obj, old| {
        crate::authz::node::admit_write(&node, r.plural, &subresource, obj, old)
    })))
}

/// NodeRestriction on a kubelet deleting or evicting a pod, or deleting a Node.
async fn admit_node_delete(
    state: &State,
    r: &'static Resource,
    parts: &axum::http::request::Parts,
    info: &request::RequestInfo,
) -> Result<(), ApiError> {
    let Some(user) = parts.extensions.get::<crate::authn::UserInfo>() else {
        return Ok(());
    };
    let Some(node) = crate::authz::node::node_of(user) else {
        return Ok(());
    };
    let deleting = info.verb == Verb::Delete
        || (info.verb == Verb::Create && info.subresource.as_deref() == Some("eviction"));
    if !r.group.is_empty() || !matches!(r.plural, "pods" | "nodes") || !deleting {
        return Ok(());
    }
    let current = state
        .registry
        .get(
            r,
            info.namespace.as_deref(),
            info.name.as_deref().unwrap_or_default(),
        )
        .await?;
    crate::authz::node::admit_delete(node, r.plural, &current)
}

/// `scale`, `pods/binding`, `pods/eviction`.
async fn subresource(
    state: &State,
    r: &'static Resource,
    info: &request::RequestInfo,
    headers: &HeaderMap,
    body: Body,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let registry = &state.registry;
    let ns = info.namespace.as_deref();
    let name = info.name.as_deref().unwrap_or_default();
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let opts = WriteOptions {
        dry_run,
        field_manager: Some(field_manager(query, headers)?),
        ..Default::default()
    };
    match (info.subresource.as_deref(), info.verb) {
        (Some("scale"), Verb::Get) if r.scale => ok(registry.get_scale(r, ns, name).await?),
        (Some("scale"), Verb::Update) if r.scale => {
            let body = json_body(headers, body).await?;
            Ok(written(
                StatusCode::OK,
                registry
                    .write_scale(r, ns, name, ScaleChange::Replace(body), opts)
                    .await?,
            ))
        }
        (Some("scale"), Verb::Patch) if r.scale => {
            let patch_type = patch_type(headers)?;
            let patch: Value = serde_json::from_slice(&read_body(body).await?)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            Ok(written(
                StatusCode::OK,
                registry
                    .write_scale(r, ns, name, ScaleChange::Patch(patch_type, patch), opts)
                    .await?,
            ))
        }
        (Some("binding"), Verb::Create) if r.plural == "pods" => {
            let binding = json_body(headers, body).await?;
            let status = registry.bind_pod(r, ns, name, binding, dry_run).await?;
            Ok((StatusCode::CREATED, Json(status)).into_response())
        }
        (Some("token"), Verb::Create) if r.plural == "serviceaccounts" => {
            let request = json_body(headers, body).await?;
            let answer = crate::tokens::request(
                &state.tokens,
                registry,
                ns.unwrap_or_default(),
                name,
                &request,
            )
            .await?;
            Ok((StatusCode::CREATED, Json(answer)).into_response())
        }
        (Some("eviction"), Verb::Create) if r.plural == "pods" => {
            let eviction = json_body(headers, body).await?;
            let status = registry
                .evict_pod(r, ns.unwrap_or_default(), name, eviction, dry_run)
                .await?;
            Ok((StatusCode::CREATED, Json(status)).into_response())
        }
        _ => Err(ApiError::path_not_found()),
    }
}

/// Server-side apply's content type.
/// [`written`], after the authorizer has seen a write to an RBAC object (so the
/// permission it grants is in force when the client hears back).
async fn written_rbac_aware(
    state: &State,
    r: &Resource,
    code: StatusCode,
    done: Written,
) -> Response {
    if r.group == crate::authz::rbac::GROUP
        && let Some(revision) = done
            .object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|rv| rv.parse().ok())
    {
        state.authorizer.rbac.caught_up(r.plural, revision).await;
    }
    written(code, done)
}

/// A written object, with each warning as a `Warning: 299 - "..."` header (RFC 7234),
/// which kubectl prints.
fn written(code: StatusCode, written: Written) -> Response {
    let mut response = (code, Json(written.object)).into_response();
    if !written.audit.is_empty() {
        response
            .extensions_mut()
            .insert(crate::audit::Annotations(written.audit));
    }
    for warning in written.warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(value) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn ok(value: Value) -> Result<Response, ApiError> {
    Ok(Json(value).into_response())
}

async fn watch_response(
    registry: &Registry,
    r: &'static Resource,
    ns: Option<String>,
    name: Option<&str>,
    query: &HashMap<String, String>,
    table: Option<crate::table::IncludeObject>,
) -> Result<Response, ApiError> {
    // Upstream's default is a random 30-60 minutes; 0 means the default too.
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: \"{t}\"")))?,
        None => 0,
    };
    let timeout = Duration::from_secs(if timeout == 0 { 1800 } else { timeout });
    let mut list = list_options(r, query)?;
    if let Some(name) = name {
        // A watch on one object is a watch on its collection narrowed by name.
        list.field_selector = list.field_selector.and_name(name);
    }
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let send_initial_events = match query.get("sendInitialEvents").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid sendInitialEvents: {other:?}"
            )));
        }
    };
    if send_initial_events.is_some()
        && list.resource_version_match.as_deref() != Some("NotOlderThan")
    {
        return Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            vec![FieldError {
                field: "resourceVersionMatch".into(),
                reason: "FieldValueForbidden",
                message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
            }],
        ));
    }
    if send_initial_events == Some(true) && !bookmarks {
        return Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            vec![FieldError {
                field: "allowWatchBookmarks".into(),
                reason: "FieldValueForbidden",
                message:
                    "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"
                        .into(),
            }],
        ));
    }
    let opts = WatchOptions {
        list,
        bookmarks,
        timeout,
        table,
        send_initial_events,
    };
    let rx = watch::start(registry, r, ns, opts).await?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::internal("building the watch response").into_response()))
}

const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// `/api`, `/api/v1`, `/apis`, `/apis/GROUP`, `/apis/GROUP/VERSION`; `/api` and `/apis`
/// in the aggregated format when the client asks for it (one request for everything).
fn discovery_response(path: &str, headers: &HeaderMap) -> Option<Response> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let (["api"] | ["apis"], Some(version)) =
        (parts.as_slice(), discovery::wants_aggregated(headers))
    {
        let body = discovery::aggregated(parts[0] == "api", version);
        let mut response = Json(body).into_response();
        let content_type =
            format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
        if let Ok(value) = header::HeaderValue::from_str(&content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
            .headers_mut()
            .insert(header::VARY, header::HeaderValue::from_static("Accept"));
        return Some(response);
    }
    if parts.as_slice() == ["openapi", "v2"] {
        // The client's first acceptable form: gnostic protobuf (client-go) or JSON.
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("*/*");
        let chosen =
            accept
                .split(',')
                .find_map(|a| match a.split(';').next().unwrap_or_default().trim() {
                    "application/json" | "*/*" | "application/*" => Some(false),
                    OPENAPI_V2_PROTOBUF
                    | "application/com.github.proto-openapi.spec.v2.v1.0+protobuf" => Some(true),
                    _ => None,
                });
        return Some(match chosen {
            Some(false) => Json(crate::openapi::v2()).into_response(),
            // Go's mime parser rejects the '@' of the accepted name: upstream answers
            // with octet-stream too.
            Some(true) => (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                crate::openapi::v2_protobuf(),
            )
                .into_response(),
            None => {
                ApiError::not_acceptable(&["application/json", OPENAPI_V2_PROTOBUF]).into_response()
            }
        });
    }
    let value = match parts.as_slice() {
        ["api"] => discovery::api_versions(),
        ["api", version] => discovery::resource_list("", version)?,
        ["apis"] => discovery::api_groups(),
        ["apis", group] => discovery::api_group(group)?,
        ["apis", group, version] => discovery::resource_list(group, version)?,
        ["openapi", "v3"] => crate::openapi::root(),
        ["openapi", "v3", rest @ ..] => crate::openapi::document(&rest.join("/"))?,
        _ => return None,
    };
    Some(Json(value).into_response())
}
