//! PortForward: each forwarded port is a TCP connection to the pod's loopback address,
//! made from inside its network namespace.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// The channel protocol versions a port forward speaks (binary frames).
const FORWARD_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];

pub(super) async fn port_forward(
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
    let Some(mut forward) = streams.forwards.take(&token) else {
        return unknown_token("port-forward");
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
