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

/// A PortForward the RPC accepted: the sandbox's network namespace (none: the node's).
#[derive(Clone, Debug)]
pub struct PendingForward {
    pub netns: Option<std::path::PathBuf>,
    pub ports: Vec<u16>,
}

pub struct Streams {
    address: SocketAddr,
    pending: Mutex<HashMap<String, (Instant, PendingExec)>>,
    forwards: Mutex<HashMap<String, (Instant, PendingForward)>>,
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

    /// Registers a port forward; the URL its client connects to.
    pub fn forward_url(&self, forward: PendingForward) -> String {
        let token = crate::util::new_id()[..32].to_string();
        let mut forwards = lock(&self.forwards);
        forwards.retain(|_, (at, _)| at.elapsed() < TOKEN_TTL);
        forwards.insert(token.clone(), (Instant::now(), forward));
        format!("http://{}/portforward/{token}", self.address)
    }

    fn take_forward(&self, token: &str) -> Option<PendingForward> {
        let (at, forward) = lock(&self.forwards).remove(token)?;
        (at.elapsed() < TOKEN_TTL).then_some(forward)
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
        forwards: Mutex::new(HashMap::new()),
    });
    tracing::info!(address = %streams.address, "streaming server listening");
    let app = axum::Router::new()
        .route("/exec/{token}", axum::routing::get(exec))
        .route("/portforward/{token}", axum::routing::get(port_forward))
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
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match checked_upgrade(upgrade, &headers, &PROTOCOLS) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal,
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
    let pid_file = engine
        .settings
        .data_dir
        .join("console")
        .join(format!("{}.pid", &crate::util::new_id()[..12]));
    let _ = std::fs::create_dir_all(pid_file.parent().unwrap_or(std::path::Path::new("/")));
    let mut child = tokio::process::Command::new(&engine.settings.oci_runtime)
        .arg("--root")
        .arg(engine.oci_root())
        .arg("exec")
        .arg("--pid-file")
        .arg(&pid_file)
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
    // If the client goes away, the command inside the container goes too (killing
    // `runc exec` alone would orphan it).
    let mut process = crate::container::KillOnDrop(Some(pid_file));
    // Stdin gets a writer of its own, so a full pipe never stops output from draining.
    let stdin = child.stdin.take().map(|mut pipe| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        tx
    });
    let mut stdin = stdin;
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
    let mut exited = None;
    loop {
        tokio::select! {
            item = output.recv() => {
                let Some((channel, data)) = item else { break };
                let wanted = if channel == STDOUT { exec.stdout } else { exec.stderr };
                if wanted && sink.send(frame(channel, &data)).await.is_err() {
                    return Ok(());
                }
            }
            status = child.wait(), if exited.is_none() => {
                exited = Some(status.map_err(|e| Failure::Internal(e.to_string()))?.code());
                // A background process may hold the pipes: drain briefly, then finish.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some((channel, data)) = output.recv().await {
                        let wanted = if channel == STDOUT { exec.stdout } else { exec.stderr };
                        if wanted {
                            let _ = sink.send(frame(channel, &data)).await;
                        }
                    }
                })
                .await;
                break;
            }
            message = source.next() => {
                match message {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                        STDIN => {
                            if let Some(input) = stdin.as_ref()
                                && input.send(data[1..].to_vec()).await.is_err()
                            {
                                stdin = None;
                            }
                        }
                        // v5: the client closed a stream; stdin is the one that matters.
                        CLOSE if data.get(1) == Some(&STDIN) => stdin = None,
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    _ => {}
                }
            }
        }
    }
    drop(stdin);
    let code = match exited {
        Some(code) => code,
        None => child
            .wait()
            .await
            .map_err(|e| Failure::Internal(e.to_string()))?
            .code(),
    };
    process.0 = None;
    finish(&mut sink, &protocol, code, &exec.cmd).await;
    Ok(())
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
        biased;
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
                if sink.send(frame(STDOUT, &data)).await.is_err() {
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
                        let _ = sink.send(frame(STDOUT, &data)).await;
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
    finish(&mut sink, &protocol, code, &exec.cmd).await;
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

/// The channel protocol versions a port forward speaks (binary frames).
const FORWARD_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];

async fn port_forward(
    State((_, streams)): State<(Arc<Engine>, Arc<Streams>)>,
    Path(token): Path<String>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match checked_upgrade(upgrade, &headers, &FORWARD_PROTOCOLS) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal,
    };
    let Some(mut forward) = streams.take_forward(&token) else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            "unknown or expired port-forward token",
        )
            .into_response();
    };
    // The ports the client asks for (`?port=80&port=443`), else the RPC's.
    let asked: Vec<u16> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("port="))
        .filter_map(|p| p.parse().ok())
        .collect();
    if !asked.is_empty() {
        forward.ports = asked;
    }
    if forward.ports.is_empty() {
        return (axum::http::StatusCode::BAD_REQUEST, "no port to forward").into_response();
    }
    upgrade
        .protocols(FORWARD_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            run_forward(forward, socket).await;
        })
}

/// Connects to `port` on the loopback address of `netns` (a thread enters the
/// namespace, connects, and ends; the socket stays in the namespace it was made in).
async fn connect_in(
    netns: Option<std::path::PathBuf>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            if let Some(netns) = netns {
                let file = std::fs::File::open(netns)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            }
            std::net::TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(5),
            )
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// Kubernetes' WebSocket port forwarding: port i has data channel 2i and error
/// channel 2i+1; each channel's first message is its port (u16, little endian); one
/// connection per port, opened when the stream starts.
async fn run_forward(forward: PendingForward, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    let (tx, mut from_ports) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    let mut writers = Vec::new();
    for (i, port) in forward.ports.iter().enumerate() {
        let data = u8::try_from(2 * i).unwrap_or(u8::MAX);
        for channel in [data, data.saturating_add(1)] {
            let mut first = vec![channel];
            first.extend_from_slice(&port.to_le_bytes());
            if sink.send(Message::Binary(first.into())).await.is_err() {
                return;
            }
        }
        match connect_in(forward.netns.clone(), *port).await {
            Ok(stream) => {
                let (mut reader, writer) = stream.into_split();
                writers.push(Some(writer));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = reader.read(&mut buf).await {
                        if n == 0 || tx.send((data, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                writers.push(None);
                let mut error = vec![data.saturating_add(1)];
                error.extend(format!("forwarding port {port}: {e}").into_bytes());
                let _ = sink.send(Message::Binary(error.into())).await;
            }
        }
    }
    drop(tx);
    loop {
        tokio::select! {
            item = from_ports.recv() => {
                let Some((channel, data)) = item else { break };
                if sink.send(frame(channel, &data)).await.is_err() {
                    break;
                }
            }
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() && data[0] % 2 == 0 => {
                    let index = usize::from(data[0] / 2);
                    if let Some(Some(writer)) = writers.get_mut(index)
                        && writer.write_all(&data[1..]).await.is_err()
                    {
                        writers[index] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            }
        }
    }
    let _ = sink.send(normal_close()).await;
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
