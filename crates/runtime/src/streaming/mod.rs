//! The streaming server behind the CRI's Exec, Attach and PortForward: the RPC returns
//! a one-time URL on this HTTP server (loopback, port chosen at start), and whoever
//! holds the URL (the kubelet, proxying kubectl) upgrades it to a WebSocket speaking
//! Kubernetes' channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io` or
//! `channel.k8s.io`): each binary message starts with a channel byte, 0 stdin, 1
//! stdout, 2 stderr, 3 the final status (v4+, a `Status` object, with the exit code for
//! exec), 4 terminal resize, 255 close (v5: `[255, 0]` ends stdin). Port forwarding
//! speaks SPDY/3.1 (what kubectl uses) or `v4.channel.k8s.io`'s port-forward flavour.
//!
//! - `exec.rs`: Exec through `runc exec`, with or without a terminal.
//! - `attach.rs`: Attach, through the container monitor's attach socket.
//! - `forward.rs`: PortForward into the pod's network namespace.
//! - `spdy.rs`: SPDY/3.1 frames and header compression.

mod attach;
mod exec;
mod forward;
pub mod spdy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use serde_json::json;

use crate::engine::{Engine, Failure, lock};

/// How long a URL stays valid (the kubelet's streaming idle timeout is longer;
/// containerd uses one minute for the token).
const TOKEN_TTL: Duration = Duration::from_secs(60);
const PROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// An Exec the RPC accepted, waiting for its client.
#[derive(Clone, Debug)]
pub struct PendingExec {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// An Attach the RPC accepted: the container's directory (its monitor's socket).
#[derive(Clone, Debug)]
pub struct PendingAttach {
    pub dir: std::path::PathBuf,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A PortForward the RPC accepted: the sandbox's network namespace (none: the node's).
#[derive(Clone, Debug)]
pub struct PendingForward {
    pub netns: Option<std::path::PathBuf>,
    pub ports: Vec<u16>,
}

/// One-time tokens for one kind of stream.
struct Tokens<T>(Mutex<HashMap<String, (Instant, T)>>);

impl<T> Tokens<T> {
    fn new() -> Tokens<T> {
        Tokens(Mutex::new(HashMap::new()))
    }

    fn insert(&self, value: T) -> String {
        let token = crate::util::new_id()[..32].to_string();
        let mut pending = lock(&self.0);
        pending.retain(|_, (at, _)| at.elapsed() < TOKEN_TTL);
        pending.insert(token.clone(), (Instant::now(), value));
        token
    }

    fn take(&self, token: &str) -> Option<T> {
        let (at, value) = lock(&self.0).remove(token)?;
        (at.elapsed() < TOKEN_TTL).then_some(value)
    }
}

pub struct Streams {
    address: SocketAddr,
    execs: Tokens<PendingExec>,
    attaches: Tokens<PendingAttach>,
    forwards: Tokens<PendingForward>,
}

impl Streams {
    /// Registers `exec`; the URL its client connects to.
    pub fn exec_url(&self, exec: PendingExec) -> String {
        format!("http://{}/exec/{}", self.address, self.execs.insert(exec))
    }

    /// Registers an attach; the URL its client connects to.
    pub fn attach_url(&self, attach: PendingAttach) -> String {
        format!(
            "http://{}/attach/{}",
            self.address,
            self.attaches.insert(attach)
        )
    }

    /// Registers a port forward; the URL its client connects to.
    pub fn forward_url(&self, forward: PendingForward) -> String {
        let token = self.forwards.insert(forward);
        format!("http://{}/portforward/{token}", self.address)
    }
}

/// Binds the server on `address` (port 0: any free port) and serves it until `shutdown`.
pub async fn start(
    engine: Arc<Engine>,
    address: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Arc<Streams>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let streams = Arc::new(Streams {
        address: listener.local_addr()?,
        execs: Tokens::new(),
        attaches: Tokens::new(),
        forwards: Tokens::new(),
    });
    tracing::info!(address = %streams.address, "streaming server listening");
    let app = axum::Router::new()
        .route("/exec/{token}", axum::routing::get(exec::exec))
        .route("/attach/{token}", axum::routing::get(attach::attach))
        .route(
            "/portforward/{token}",
            axum::routing::get(forward::port_forward),
        )
        .with_state((engine, streams.clone()));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "streaming server stopped");
        }
    });
    Ok(streams)
}

/// A 404 for a token that is unknown, used or expired.
fn unknown_token(kind: &str) -> Response {
    (
        axum::http::StatusCode::NOT_FOUND,
        format!("unknown or expired {kind} token"),
    )
        .into_response()
}

/// A final status for a failure before the command ran.
fn failure(message: &str) -> Vec<u8> {
    let mut bytes = vec![ERROR];
    let status = json!({"metadata": {}, "status": "Failure", "message": message,
                        "reason": "InternalError"});
    bytes.extend(status.to_string().into_bytes());
    bytes
}

/// The final status message (v4+): success, or the exit code as upstream reports it.
fn status(code: Option<i32>, cmd: &[String]) -> Vec<u8> {
    let status = match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => json!({"metadata": {}, "status": "Failure",
                       "message": "the command was killed", "reason": "InternalError"}),
    };
    let mut bytes = vec![ERROR];
    bytes.extend(status.to_string().into_bytes());
    bytes
}

/// The end of an exec stream: the final status (v4 and later), then a normal close.
async fn finish(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    protocol: &str,
    code: Option<i32>,
    cmd: &[String],
) {
    if protocol != "channel.k8s.io" {
        let _ = sink.send(Message::Binary(status(code, cmd).into())).await;
    }
    let _ = sink.send(normal_close()).await;
}

/// One message on `channel`.
fn frame(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(frame.into())
}

/// A close with code 1000: client-go reads any other (or none) as an error.
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

/// The subprotocols a WebSocket client offers.
fn upgrade_protocols(headers: &axum::http::HeaderMap) -> Vec<String> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect()
}

fn offers(offered: &[String], supported: &[&str]) -> bool {
    offered.iter().any(|p| supported.contains(&p.as_str()))
}

/// The upgrade, if the request is a WebSocket upgrade offering one of `supported`; a
/// 400 naming them otherwise (as the kubelet's wsstream refuses).
#[allow(clippy::result_large_err)]
fn checked_upgrade(
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    headers: &axum::http::HeaderMap,
    supported: &[&str],
) -> Result<WebSocketUpgrade, Response> {
    let refuse = |what: &str| {
        let message = format!("{what} ({})", supported.join(", "));
        (axum::http::StatusCode::BAD_REQUEST, message).into_response()
    };
    let Ok(upgrade) = upgrade else {
        return Err(refuse("a WebSocket upgrade is needed"));
    };
    if !offers(&upgrade_protocols(headers), supported) {
        return Err(refuse("no supported protocol offered"));
    }
    Ok(upgrade)
}
