//! The streaming server behind the CRI's Exec: the RPC returns a one-time URL on this
//! HTTP server (loopback, port chosen at start), and whoever holds the URL (the kubelet,
//! proxying kubectl) upgrades it to a WebSocket speaking Kubernetes' channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io` or `channel.k8s.io`): each binary message
//! starts with a channel byte, 0 stdin, 1 stdout, 2 stderr, 3 the final status (v4+, a
//! `Status` object with the exit code), 255 close (v5: `[255, 0]` ends stdin). The
//! command runs through `runc exec` with the container's environment, user and
//! namespaces.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{Engine, Failure, lock};

/// How long an Exec URL stays valid (the kubelet's streaming idle timeout is longer;
/// containerd uses one minute for the token).
const TOKEN_TTL: Duration = Duration::from_secs(60);
const PROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

/// An Exec the RPC accepted, waiting for its client.
#[derive(Clone, Debug)]
pub struct PendingExec {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

pub struct Streams {
    address: SocketAddr,
    pending: Mutex<HashMap<String, (Instant, PendingExec)>>,
}

impl Streams {
    /// Registers `exec`; the URL its client connects to.
    pub fn exec_url(&self, exec: PendingExec) -> String {
        let token = crate::util::new_id()[..32].to_string();
        let mut pending = lock(&self.pending);
        pending.retain(|_, (at, _)| at.elapsed() < TOKEN_TTL);
        pending.insert(token.clone(), (Instant::now(), exec));
        format!("http://{}/exec/{token}", self.address)
    }

    fn take(&self, token: &str) -> Option<PendingExec> {
        let (at, exec) = lock(&self.pending).remove(token)?;
        (at.elapsed() < TOKEN_TTL).then_some(exec)
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
        pending: Mutex::new(HashMap::new()),
    });
    tracing::info!(address = %streams.address, "streaming server listening");
    let app = axum::Router::new()
        .route("/exec/{token}", axum::routing::get(exec))
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

async fn exec(
    State((engine, streams)): State<(Arc<Engine>, Arc<Streams>)>,
    Path(token): Path<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "exec needs a WebSocket upgrade (v5.channel.k8s.io, v4.channel.k8s.io)",
        )
            .into_response();
    };
    let Some(pending) = streams.take(&token) else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            "unknown or expired exec token",
        )
            .into_response();
    };
    upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| async move {
            if let Err(e) = run_exec(engine, pending, socket).await {
                tracing::debug!(error = %e, "exec stream ended");
            }
        })
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

async fn run_exec(
    engine: Arc<Engine>,
    exec: PendingExec,
    socket: WebSocket,
) -> Result<(), Failure> {
    let protocol = socket
        .protocol()
        .and_then(|p| p.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (mut sink, mut source) = socket.split();
    let mut child = tokio::process::Command::new(&engine.settings.oci_runtime)
        .arg("--root")
        .arg(engine.oci_root())
        .arg("exec")
        .arg(&exec.container_id)
        .args(&exec.cmd)
        .stdin(if exec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Internal(format!("running the OCI runtime: {e}")))?;
    let mut stdin = child.stdin.take();
    // Both output streams into one queue; it closes when both have ended.
    let (tx, mut output) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    for (channel, stream) in [
        (
            STDOUT,
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
        (
            STDERR,
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
    ] {
        let Some(mut stream) = stream else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || tx.send((channel, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            item = output.recv() => {
                let Some((channel, data)) = item else { break };
                let wanted = if channel == STDOUT { exec.stdout } else { exec.stderr };
                if wanted {
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(channel);
                    frame.extend_from_slice(&data);
                    if sink.send(Message::Binary(frame.into())).await.is_err() {
                        let _ = child.kill().await;
                        return Ok(());
                    }
                }
            }
            message = source.next() => {
                match message {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                        STDIN => {
                            if let Some(input) = stdin.as_mut()
                                && input.write_all(&data[1..]).await.is_err()
                            {
                                stdin = None;
                            }
                        }
                        // v5: the client closed a stream; stdin is the one that matters.
                        CLOSE if data.get(1) == Some(&STDIN) => stdin = None,
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The client went away: the command goes too.
                        let _ = child.kill().await;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
    }
    drop(stdin);
    let code = child
        .wait()
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?
        .code();
    if protocol != "channel.k8s.io" {
        let _ = sink
            .send(Message::Binary(status(code, &exec.cmd).into()))
            .await;
    }
    let _ = sink.send(Message::Close(None)).await;
    Ok(())
}
