//! Exec, attach and port forwarding on the kubelet API: the kubelet asks the runtime
//! for a streaming URL (CRI Exec/Attach/PortForward) and proxies the client's connection upgrade to it, so the
//! WebSocket the client (the API server, for kubectl) opened is the runtime's, end to
//! end: the handshake headers pass through untouched and the bytes are spliced.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use k8s_cri::v1 as cri;

use super::Ctx;
use crate::spec::{POD_NAME, POD_NAMESPACE, POD_UID};

fn flag(pairs: &[(String, String)], keys: &[&str]) -> bool {
    pairs
        .iter()
        .any(|(k, v)| keys.contains(&k.as_str()) && (v == "1" || v == "true"))
}

pub(super) async fn exec(
    State(ctx): State<Ctx>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    stream(ctx, namespace, pod, container, true, request).await
}

pub(super) async fn attach(
    State(ctx): State<Ctx>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    stream(ctx, namespace, pod, container, false, request).await
}

async fn stream(
    ctx: Ctx,
    namespace: String,
    pod: String,
    container: String,
    exec: bool,
    request: Request,
) -> Response {
    let pairs = skiff_api::query::pairs(request.uri().query().unwrap_or_default());
    let streams = (
        flag(&pairs, &["input", "stdin"]),
        flag(&pairs, &["output", "stdout"]),
        flag(&pairs, &["error", "stderr"]),
        flag(&pairs, &["tty"]),
    );
    let found = match super::find(&ctx.runtime, &namespace, &pod, &container, false).await {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let url = if exec {
        let command: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        ctx.runtime.exec(&found.id, command, streams).await
    } else {
        ctx.runtime.attach(&found.id, streams).await
    };
    match url {
        Ok(url) => proxy(request, &url).await,
        Err(e) => (StatusCode::BAD_REQUEST, e.message().to_string()).into_response(),
    }
}

pub(super) async fn port_forward(
    State(ctx): State<Ctx>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (namespace, pod, uid) = (param("namespace"), param("pod"), param("uid"));
    let sandboxes = match ctx.runtime.all_sandboxes().await {
        Ok(sandboxes) => sandboxes,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()).into_response();
        }
    };
    let ready = sandboxes
        .into_iter()
        .filter(|s| {
            s.labels.get(POD_NAME) == Some(&pod)
                && s.labels.get(POD_NAMESPACE) == Some(&namespace)
                && (uid.is_empty() || s.labels.get(POD_UID) == Some(&uid))
                && s.state == cri::PodSandboxState::SandboxReady as i32
        })
        .max_by_key(|s| s.created_at);
    let Some(sandbox) = ready else {
        let message = format!("pod {namespace}/{pod} has no running sandbox on this node");
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    // WebSocket clients name the ports in the query (`port=80`); SPDY clients per stream.
    let query = request.uri().query().unwrap_or_default().to_string();
    match ctx.runtime.port_forward(&sandbox.id, Vec::new()).await {
        Ok(url) if query.is_empty() => proxy(request, &url).await,
        Ok(url) => proxy(request, &format!("{url}?{query}")).await,
        Err(e) => (StatusCode::BAD_REQUEST, e.message().to_string()).into_response(),
    }
}

/// Forwards an upgrade request to `url` (plain HTTP, the runtime's loopback streaming
/// server) and splices the two upgraded connections.
pub async fn proxy(mut request: Request, url: &str) -> Response {
    let fail = |e: &dyn std::fmt::Display| {
        (
            StatusCode::BAD_GATEWAY,
            format!("streaming to the runtime: {e}"),
        )
            .into_response()
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return fail(&format!("unsupported streaming URL {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let client_upgrade = hyper::upgrade::on(&mut request);
    let tcp = match tokio::net::TcpStream::connect(authority).await {
        Ok(tcp) => tcp,
        Err(e) => return fail(&e),
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
            Ok(pair) => pair,
            Err(e) => return fail(&e),
        };
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut forward = hyper::Request::get(path).header(header::HOST, authority);
    for name in skiff_api::query::UPGRADE_HEADERS {
        for value in request.headers().get_all(name) {
            forward = forward.header(name, value);
        }
    }
    let forward = match forward.body(Body::empty()) {
        Ok(forward) => forward,
        Err(e) => return fail(&e),
    };
    let mut response = match sender.send_request(forward).await {
        Ok(response) => response,
        Err(e) => return fail(&e),
    };
    let status = response.status();
    let mut answer = Response::builder().status(status);
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = axum::body::to_bytes(Body::new(response.into_body()), 64 * 1024)
            .await
            .unwrap_or_default();
        return answer.body(Body::from(body)).unwrap_or_else(|e| fail(&e));
    }
    let server_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else {
            return;
        };
        splice(client, server).await;
    });
    answer.body(Body::empty()).unwrap_or_else(|e| fail(&e))
}

/// Copies both ways until either side ends, then closes both: a client that vanished
/// does not hold the other side open.
async fn splice(client: hyper::upgrade::Upgraded, server: hyper::upgrade::Upgraded) {
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut server_read, mut server_write) = tokio::io::split(TokioIo::new(server));
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
        _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
    }
}
