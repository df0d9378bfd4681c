//! Attach: the container's own streams, through its monitor's attach socket (see
//! `crate::attach`). The session ends when the container exits (the monitor closes the
//! socket; the final status is success, as the kubelet reports it) or when the client
//! leaves; input ending reaches the monitor, which closes a `stdin_once` container's
//! stdin.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::attach::{INPUT, INPUT_END, encode, read_frame_async};

pub(super) async fn attach(
    State((_, streams)): State<(Arc<Engine>, Arc<Streams>)>,
    Path(token): Path<String>,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match checked_upgrade(upgrade, &headers, &PROTOCOLS) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal,
    };
    let Some(pending) = streams.attaches.take(&token) else {
        return unknown_token("attach");
    };
    upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| run_attach(pending, socket))
}

/// Connects to the monitor's socket through the directory's descriptor: the full path
/// may be longer than a Unix socket address allows.
async fn connect(dir: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    let dir = std::fs::File::open(dir)?;
    let path = format!(
        "/proc/self/fd/{}/{}",
        dir.as_raw_fd(),
        crate::attach::SOCKET
    );
    let stream = tokio::net::UnixStream::connect(path).await;
    drop(dir);
    stream
}

async fn run_attach(attach: PendingAttach, socket: WebSocket) {
    let protocol = socket
        .protocol()
        .and_then(|p| p.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (mut sink, mut source) = socket.split();
    let stream = match connect(&attach.dir).await {
        Ok(stream) => stream,
        Err(e) => {
            let message = format!("attaching to the container: {e}");
            let _ = sink.send(Message::Binary(failure(&message).into())).await;
            let _ = sink.send(normal_close()).await;
            return;
        }
    };
    let (mut reader, mut monitor) = stream.into_split();
    let (tx, mut output) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    tokio::spawn(async move {
        while let Some(frame) = read_frame_async(&mut reader).await {
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut stdin_open = attach.stdin;
    loop {
        tokio::select! {
            item = output.recv() => {
                // The monitor closed the socket: the container has exited.
                let Some((stream, data)) = item else { break };
                let wanted = match stream {
                    STDOUT => attach.stdout,
                    STDERR => attach.stderr,
                    _ => false,
                };
                if wanted && sink.send(frame(stream, &data)).await.is_err() {
                    break;
                }
            }
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    STDIN if stdin_open => {
                        let _ = monitor.write_all(&encode(INPUT, &data[1..])).await;
                    }
                    RESIZE if attach.tty => {
                        if let Some((width, height)) = crate::console::parse_resize(&data[1..]) {
                            let mut size = width.to_be_bytes().to_vec();
                            size.extend_from_slice(&height.to_be_bytes());
                            let _ = monitor.write_all(&encode(crate::attach::RESIZE, &size)).await;
                        }
                    }
                    // v5: the client's stdin ended.
                    CLOSE if data.get(1) == Some(&STDIN) && stdin_open => {
                        stdin_open = false;
                        let _ = monitor.write_all(&encode(INPUT_END, &[])).await;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client left: its input has ended too.
                    if stdin_open {
                        let _ = monitor.write_all(&encode(INPUT_END, &[])).await;
                    }
                    return;
                }
                _ => {}
            }
        }
    }
    finish(&mut sink, &protocol, Some(0), &[]).await;
}
