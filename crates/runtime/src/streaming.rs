//! The streaming server behind the CRI's Exec: the RPC returns a one-time URL on this
//! HTTP server (loopback, port chosen at start), and whoever holds the URL (the kubelet,
//! proxying kubectl) upgrades it to a WebSocket speaking Kubernetes' channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io` or `channel.k8s.io`): each binary message
//! starts with a channel byte, 0 stdin, 1 stdout, 2 stderr, 3 the final status (v4+, a
//! `Status` object with the exit code), 255 close (v5: `[255, 0]` ends stdin). The
//! command runs through `runc exec` with the container's environment, user and
//! namespaces; with a TTY (`runc exec -t`), channel 1 carries the terminal's output and
//! channel 4 resizes it.

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
    if exec.tty {
        return run_tty_exec(engine, exec, socket, protocol).await;
    }
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

/// Receives the terminal's master end the OCI runtime sends over its console socket.
fn receive_terminal(
    stream: &std::os::unix::net::UnixStream,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 4096];
    recvmsg(
        stream,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::empty(),
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(std::io::Error::other("the OCI runtime sent no terminal"))
}

/// Exec with a terminal: `runc exec -t` hands the terminal's master end over a console
/// socket; stdin writes to it, its output (stdout and stderr together) is channel 1,
/// and channel 4 messages (`{"Width":..,"Height":..}`) resize it.
async fn run_tty_exec(
    engine: Arc<Engine>,
    exec: PendingExec,
    socket: WebSocket,
    protocol: String,
) -> Result<(), Failure> {
    let internal = |e: std::io::Error| Failure::Internal(e.to_string());
    let (mut sink, mut source) = socket.split();
    // A short path: Unix socket paths stop at 108 bytes.
    let consoles = engine.settings.data_dir.join("console");
    let socket_path = consoles.join(format!("{}.sock", &crate::util::new_id()[..12]));
    let listener = match std::fs::create_dir_all(&consoles)
        .and_then(|()| tokio::net::UnixListener::bind(&socket_path))
    {
        Ok(listener) => listener,
        Err(e) => {
            let message = format!("creating the console socket {}: {e}", socket_path.display());
            let _ = sink.send(Message::Binary(failure(&message).into())).await;
            return Err(Failure::Internal(message));
        }
    };
    let _cleanup = RemoveOnDrop(socket_path.clone());
    let pid_file = socket_path.with_extension("pid");
    let _pid_cleanup = RemoveOnDrop(pid_file.clone());
    // `runc exec -t` hands the terminal over only when it detaches; a small helper
    // (a subreaper) then waits for the detached process and reports its exit code.
    let Some((program, args)) = engine.settings.exec_wait.split_first() else {
        return Err(Failure::Internal("no exec helper configured".into()));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--")
        .arg(&engine.settings.oci_runtime)
        .arg("--root")
        .arg(engine.oci_root())
        .args(["exec", "-d", "-t", "--console-socket"])
        .arg(&socket_path)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&exec.container_id)
        .args(&exec.cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Internal(format!("running the exec helper: {e}")))?;
    let mut report = child.stdout.take();
    // Kills the exec'd process if the client goes away first.
    let mut process = crate::container::KillOnDrop(Some(pid_file.clone()));
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()) => accepted,
        _ = child.wait() => {
            let outcome = read_report(report.as_mut()).await;
            let message = outcome["error"].as_str().unwrap_or("the exec failed").to_string();
            let _ = sink.send(Message::Binary(failure(&message).into())).await;
            return Ok(());
        }
    };
    let (stream, _) = accepted
        .map_err(|_| Failure::Timeout("the OCI runtime sent no terminal".into()))?
        .map_err(internal)?;
    let stream = stream.into_std().map_err(internal)?;
    stream.set_nonblocking(false).map_err(internal)?;
    let master = tokio::task::spawn_blocking(move || receive_terminal(&stream))
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?
        .map_err(internal)?;
    let master = std::fs::File::from(master);
    let resizer = master.try_clone().map_err(internal)?;
    let mut writer = tokio::fs::File::from_std(master.try_clone().map_err(internal)?);
    let mut reader = tokio::fs::File::from_std(master);
    let (tx, mut output) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        // EIO once the last process holding the terminal is gone.
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    let mut exited = None;
    loop {
        tokio::select! {
            data = output.recv() => {
                let Some(data) = data else { break };
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(STDOUT);
                frame.extend_from_slice(&data);
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    let _ = child.kill().await;
                    return Ok(());
                }
            }
            _ = child.wait(), if exited.is_none() => {
                let outcome = read_report(report.as_mut()).await;
                exited = Some(outcome["exitCode"].as_i64().and_then(|c| i32::try_from(c).ok()));
                // What the terminal still holds follows shortly; then stop waiting.
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while let Some(data) = output.recv().await {
                        let mut frame = vec![STDOUT];
                        frame.extend_from_slice(&data);
                        let _ = sink.send(Message::Binary(frame.into())).await;
                    }
                })
                .await;
                break;
            }
            message = source.next() => {
                match message {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                        STDIN => {
                            let _ = writer.write_all(&data[1..]).await;
                            let _ = writer.flush().await;
                        }
                        RESIZE => resize(&resizer, &data[1..]),
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        let _ = child.kill().await;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
    }
    let code = match exited {
        Some(code) => code,
        None => {
            let _ = child.wait().await;
            read_report(report.as_mut()).await["exitCode"]
                .as_i64()
                .and_then(|c| i32::try_from(c).ok())
        }
    };
    // It ended by itself: nothing to kill.
    process.0 = None;
    if protocol != "channel.k8s.io" {
        let _ = sink
            .send(Message::Binary(status(code, &exec.cmd).into()))
            .await;
    }
    let _ = sink.send(Message::Close(None)).await;
    Ok(())
}

/// A resize message (`{"Width":80,"Height":24}`) applied to the terminal.
fn resize(terminal: &std::fs::File, message: &[u8]) {
    let Ok(size) = serde_json::from_slice::<serde_json::Value>(message) else {
        return;
    };
    let dimension = |key: &str| size[key].as_u64().and_then(|v| u16::try_from(v).ok());
    if let (Some(width), Some(height)) = (dimension("Width"), dimension("Height")) {
        let _ = rustix::termios::tcsetwinsize(
            terminal,
            rustix::termios::Winsize {
                ws_row: height,
                ws_col: width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        );
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The exec helper's one-line report.
async fn read_report(report: Option<&mut tokio::process::ChildStdout>) -> serde_json::Value {
    let mut text = String::new();
    if let Some(report) = report {
        let _ = report.read_to_string(&mut text).await;
    }
    serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null)
}
