//! The kubelet API (HTTPS, port 10250 by default): what the API server proxies to the
//! node. Only clients with a certificate from the cluster CA get in (the API server's
//! kubelet client certificate); without a CA to check against, the API is not served.
//! The serving certificate is self-signed for the node's name and address (upstream's
//! default without a serving certificate; the API server does not verify it).
//!
//! - `/healthz`
//! - `/pods`: the pods this kubelet runs (static ones included), a v1 PodList.
//! - `/stats/summary`: resource use of the node and its pods (`stats.rs`);
//!   `/metrics/resource`: its CPU and memory as Prometheus series (what metrics-server
//!   scrapes); `/metrics`: the kubelet's own series.
//! - `/containerLogs/{namespace}/{pod}/{container}`: the container's log as plain text,
//!   from the CRI log file (`follow`, `previous`, `timestamps`, `tailLines`,
//!   `sinceSeconds`, `sinceTime`, `limitBytes`, as `kubectl logs` sends them).
//! - `/exec/{namespace}/{pod}/{container}?command=..&input&output&error&tty` and
//!   `/attach/...`: upgraded connections proxied to the runtime's streaming server
//!   (`stream.rs`).
//! - `/portForward/{namespace}/{pod}[/{uid}]`: the same for the pod's sandbox (SPDY
//!   streams naming their ports, or a WebSocket with `?port=`).

mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1 as cri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cri::Runtime;
use crate::spec::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE};

/// Where the API listens and whom it lets in.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub address: SocketAddr,
    /// PEM CA bundle client certificates must chain to.
    pub client_ca: PathBuf,
}

/// What the API serves from.
pub struct Serving {
    pub node: String,
    pub runtime: Runtime,
    pub root_dir: PathBuf,
    pub pod_log_dir: PathBuf,
    pub pods: crate::pods::Known,
}

#[derive(Clone)]
struct Ctx {
    runtime: Runtime,
    serving: Arc<Serving>,
    samples: Arc<crate::stats::NodeSamples>,
}

fn tls(config: &ApiConfig, node: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = std::fs::read(&config.client_ca)
        .map_err(|e| format!("reading {}: {e}", config.client_ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let mut names = vec![node.to_string(), "localhost".to_string()];
    names.push(config.address.ip().to_string());
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{node}@kubelet"));
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key =
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the API's address (port 0: a free one); the listener and where it listens.
pub async fn bind(
    config: &ApiConfig,
) -> Result<(tokio::net::TcpListener, SocketAddr), crate::Error> {
    let listener = tokio::net::TcpListener::bind(config.address)
        .await
        .map_err(|e| crate::Error::Config(format!("binding {}: {e}", config.address)))?;
    let address = listener
        .local_addr()
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    Ok((listener, address))
}

/// Serves the kubelet API on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ApiConfig,
    serving: Serving,
) -> Result<(), crate::Error> {
    let tls = tls(&config, &serving.node).map_err(crate::Error::Config)?;
    tracing::info!(address = %config.address, "kubelet API listening");
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/pods", axum::routing::get(pods))
        .route("/stats/summary", axum::routing::get(summary))
        .route("/metrics/resource", axum::routing::get(resource_metrics))
        .route("/metrics", axum::routing::get(metrics))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            axum::routing::any(stream::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            axum::routing::any(stream::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::any(stream::port_forward),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            axum::routing::any(stream::port_forward),
        )
        .with_state(Ctx {
            runtime: serving.runtime.clone(),
            serving: Arc::new(serving),
            samples: Arc::default(),
        });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                tracing::debug!(%peer, "kubelet API: TLS handshake refused");
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        tower::ServiceExt::oneshot(app, request)
                            .await
                            .unwrap_or_else(|e| match e {}),
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `/pods`: the pods this kubelet runs, as a v1 PodList.
async fn pods(State(ctx): State<Ctx>) -> Response {
    let items: Vec<k8s_openapi::api::core::v1::Pod> = ctx
        .serving
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let list = serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items,
    });
    axum::Json(list).into_response()
}

async fn summary_of(ctx: &Ctx) -> Result<serde_json::Value, Response> {
    let s = &ctx.serving;
    crate::stats::summary(
        &s.runtime,
        &s.node,
        &s.root_dir,
        &s.pod_log_dir,
        &ctx.samples,
    )
    .await
    .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()))
}

/// `/stats/summary`: the node's and its pods' resource use (stats/v1alpha1).
async fn summary(State(ctx): State<Ctx>) -> Response {
    match summary_of(&ctx).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(refusal) => refusal,
    }
}

const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/metrics/resource`: CPU and memory series, as metrics-server scrapes them.
async fn resource_metrics(State(ctx): State<Ctx>) -> Response {
    match summary_of(&ctx).await {
        Ok(summary) => (
            [(axum::http::header::CONTENT_TYPE, PROMETHEUS)],
            crate::stats::resource_metrics(&summary),
        )
            .into_response(),
        Err(refusal) => refusal,
    }
}

/// `/metrics`: the kubelet's own series.
async fn metrics(State(ctx): State<Ctx>) -> Response {
    let pods = ctx.serving.pods.lock().map(|p| p.len()).unwrap_or(0);
    let containers = match ctx.runtime.all_containers().await {
        Ok(all) => all,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()),
    };
    let mut by_state: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for c in &containers {
        let state = match cri::ContainerState::try_from(c.state) {
            Ok(cri::ContainerState::ContainerCreated) => "created",
            Ok(cri::ContainerState::ContainerRunning) => "running",
            Ok(cri::ContainerState::ContainerExited) => "exited",
            _ => "unknown",
        };
        *by_state.entry(state).or_default() += 1;
    }
    let mut text = format!(
        "# HELP kubelet_node_name [ALPHA] The node's name. The count is always 1.\n\
         # TYPE kubelet_node_name gauge\n\
         kubelet_node_name{{node=\"{}\"}} 1\n\
         # HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n\
         # TYPE kubelet_running_pods gauge\n\
         kubelet_running_pods {pods}\n\
         # HELP kubelet_running_containers [ALPHA] Number of containers currently running\n\
         # TYPE kubelet_running_containers gauge\n",
        ctx.serving.node
    );
    for (state, count) in by_state {
        text.push_str(&format!(
            "kubelet_running_containers{{container_state=\"{state}\"}} {count}\n"
        ));
    }
    ([(axum::http::header::CONTENT_TYPE, PROMETHEUS)], text).into_response()
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

/// The container a log request means: the newest of that name in the pod's newest
/// sandbox, or the one before it (`previous`).
async fn find(
    runtime: &Runtime,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<cri::ContainerStatus, Response> {
    let internal =
        |e: tonic::Status| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string());
    let mut sandboxes: Vec<cri::PodSandbox> = runtime
        .all_sandboxes()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|s| {
            s.labels.get(POD_NAME).map(String::as_str) == Some(pod)
                && s.labels.get(POD_NAMESPACE).map(String::as_str) == Some(namespace)
        })
        .collect();
    sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    let mut history = Vec::new();
    for sandbox in &sandboxes {
        let mut of_sandbox: Vec<cri::ContainerStatus> = runtime
            .containers_of(&sandbox.id)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|c| c.labels.get(CONTAINER_NAME).map(String::as_str) == Some(container))
            .collect();
        of_sandbox.sort_by_key(|c| {
            std::cmp::Reverse((c.metadata.as_ref().map_or(0, |m| m.attempt), c.created_at))
        });
        history.extend(of_sandbox);
    }
    let wanted = usize::from(previous);
    history.into_iter().nth(wanted).ok_or_else(|| {
        let what = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        refuse(StatusCode::BAD_REQUEST, what)
    })
}

/// An RFC 3339 time in nanoseconds since the epoch.
fn nanos_of(text: &str) -> Option<i64> {
    let time: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    i64::try_from(time.as_nanosecond()).ok()
}

/// One CRI log line: (timestamp text, nanoseconds, full line?, content).
fn parse(line: &[u8]) -> Option<(String, i64, bool, &[u8])> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let stamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    let nanos = nanos_of(stamp)?;
    Some((stamp.to_string(), nanos, tag != b"P", content))
}

/// What a log request asks for.
struct Options {
    timestamps: bool,
    since: Option<i64>,
    tail: Option<usize>,
    limit: Option<usize>,
}

/// Plain text from CRI log content (partial lines joined, `since` applied).
fn render(content: &[u8], options: &Options, pending: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for line in content.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        let Some((stamp, nanos, full, text)) = parse(&line[..line.len() - 1]) else {
            continue;
        };
        if options.since.is_some_and(|since| nanos < since) {
            continue;
        }
        if pending.is_empty() && options.timestamps {
            pending.extend_from_slice(stamp.as_bytes());
            pending.push(b' ');
        }
        pending.extend_from_slice(text);
        if full {
            pending.push(b'\n');
            lines.push(std::mem::take(pending));
        }
    }
    lines
}

async fn container_logs(
    State(ctx): State<Ctx>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let flag = |key: &str| query.get(key).is_some_and(|v| v == "true" || v == "1");
    let previous = flag("previous");
    let found = match find(&ctx.runtime, &namespace, &pod, &container, previous).await {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let now = crate::status_now_nanos();
    let since = query
        .get("sinceSeconds")
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| now - s * 1_000_000_000)
        .or_else(|| query.get("sinceTime").and_then(|t| nanos_of(t)));
    let options = Options {
        timestamps: flag("timestamps"),
        since,
        tail: query.get("tailLines").and_then(|t| t.parse().ok()),
        limit: query.get("limitBytes").and_then(|t| t.parse().ok()),
    };
    let follow = flag("follow") && !previous;
    let path = PathBuf::from(&found.log_path);
    let id = found.id.clone();
    let runtime = ctx.runtime.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut offset = 0usize;
        let mut pending = Vec::new();
        let mut sent = 0usize;
        let mut first = true;
        loop {
            let content = tokio::fs::read(&path).await.unwrap_or_default();
            // Only whole lines: a line being written is read next time.
            let end = content
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            if end > offset {
                let mut lines = render(&content[offset..end], &options, &mut pending);
                offset = end;
                if first && let Some(tail) = options.tail {
                    let skip = lines.len().saturating_sub(tail);
                    lines.drain(..skip);
                }
                for line in lines {
                    let mut line = line;
                    if let Some(limit) = options.limit {
                        if sent >= limit {
                            return;
                        }
                        line.truncate(limit - sent);
                    }
                    sent += line.len();
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
            }
            first = false;
            if !follow {
                return;
            }
            // Following: until the container has exited and its log is drained.
            let running = runtime
                .container_status(&id)
                .await
                .is_ok_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
            if !running {
                let content = tokio::fs::read(&path).await.unwrap_or_default();
                if content.len() <= offset {
                    return;
                }
                continue;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(axum::http::header::CONTENT_TYPE, "text/plain")], body).into_response()
}
