//! Exec: the command runs through `runc exec` with the container's environment, user and
//! namespaces; with a TTY (`runc exec -t`), channel 1 carries the terminal's output and
//! channel 4 resizes it.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

pub(super) async fn exec(
    State((engine, streams)): State<(Arc<Engine>, Arc<Streams>)>,
    Path(token): Path<String>,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match checked_upgrade(upgrade, &headers, &PROTOCOLS) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal,
    };
    let Some(pending) = streams.execs.take(&token) else {
        return unknown_token("exec");
    };
    upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| async move {
            if let Err(e) = run_exec(engine, pending, socket).await {
                tracing::debug!(error = %e, "exec stream ended");
            }
        })
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
    let master = tokio::task::spawn_blocking(move || crate::console::receive_terminal(&stream))
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
                        RESIZE => {
                            if let Some((width, height)) = crate::console::parse_resize(&data[1..]) {
                                crate::console::set_size(&resizer, width, height);
                            }
                        }
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
