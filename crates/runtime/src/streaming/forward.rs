//! PortForward: each forwarded port is a TCP connection to the pod's loopback address,
//! made from inside its network namespace. Two wire protocols reach it:
//!
//! - SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version: portforward.k8s.io`),
//!   what kubectl speaks (tunnelled through a WebSocket up to the API server, which
//!   unwraps it): the client opens an error stream and a data stream per connection,
//!   paired by their `requestID` header and naming the `port`.
//! - WebSocket (`v4.channel.k8s.io`, `portforward.k8s.io`) with the ports in the query,
//!   as other clients use it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, Frame};
use super::*;

/// The channel protocol versions a port forward speaks (binary frames).
const FORWARD_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];
/// The SPDY stream protocol of port forwarding.
const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// How long the first stream of a pair waits for the second (upstream's stream
/// creation timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one direction of a finished connection may take to finish after the other
/// (as containerd: a second).
const LINGER: Duration = Duration::from_secs(1);

pub(super) async fn port_forward(
    State((engine, streams)): State<(Arc<Engine>, Arc<Streams>)>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    let spdy = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if spdy {
        return spdy_upgrade(&streams, &token, request);
    }
    let (mut parts, _) = request.into_parts();
    let query = parts.uri.query().map(String::from);
    let headers = parts.headers.clone();
    let upgrade =
        WebSocketUpgrade::from_request_parts(&mut parts, &(engine, streams.clone())).await;
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
        return (StatusCode::BAD_REQUEST, "no port to forward").into_response();
    }
    upgrade
        .protocols(FORWARD_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            run_forward(forward, socket).await;
        })
}

/// Accepts a SPDY upgrade (after the protocol negotiation upstream's handshake does)
/// and serves the session once the connection has switched.
fn spdy_upgrade(streams: &Streams, token: &str, mut request: Request) -> Response {
    let offered: Vec<String> = request
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    if !offered.is_empty() && !offered.iter().any(|p| p == SPDY_PROTOCOL) {
        let message = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [\"{SPDY_PROTOCOL}\"]"
        );
        return (StatusCode::FORBIDDEN, message).into_response();
    }
    let Some(forward) = streams.forwards.take(token) else {
        return unknown_token("port-forward");
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(io) => serve_spdy(forward, hyper_util::rt::TokioIo::new(io)).await,
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", SPDY_PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

/// What the session's writer sends.
enum Out {
    Reply(u32),
    Data(u32, Vec<u8>),
    Fin(u32),
    Reset(u32, u32),
    Ping(u32),
}

/// The first stream of a pair, waiting for the second.
struct Half {
    stream: u32,
    error: bool,
    port: u16,
    since: Instant,
}

/// One SPDY port-forward session: streams paired by request id, a connection into
/// the pod per pair.
async fn serve_spdy<T>(forward: PendingForward, io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (reader, mut writer) = tokio::io::split(io);
    let mut reader = tokio::io::BufReader::new(reader);
    let (out, mut outgoing) = mpsc::channel::<Out>(64);
    // The writer owns the compression context: header blocks go out in order.
    let writing = tokio::spawn(async move {
        let mut headers = spdy::Headers::new();
        while let Some(item) = outgoing.recv().await {
            let bytes = match item {
                Out::Reply(id) => headers.syn_reply(id, 0, &[]),
                Out::Data(id, data) => spdy::data(id, 0, &data),
                Out::Fin(id) => spdy::data(id, spdy::FIN, &[]),
                Out::Reset(id, status) => spdy::reset(id, status),
                Out::Ping(id) => spdy::ping(id),
            };
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    // Frames are read apart, so the session can also act on time (pairs that never
    // complete) and a partly read frame is never dropped.
    let (frames_tx, mut frames) = mpsc::channel::<Frame>(32);
    let reading = tokio::spawn(async move {
        loop {
            match spdy::read_frame(&mut reader).await {
                Ok(Some(frame)) => {
                    if frames_tx.send(frame).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward session ended");
                    return;
                }
            }
        }
    });
    let mut headers = spdy::Headers::new();
    let mut halves: HashMap<String, Half> = HashMap::new();
    // Data stream id -> the bytes for the pod's side (dropped at the client's FIN).
    let mut inbound: HashMap<u32, Inbound> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            _ = tick.tick() => {
                // Pairs whose second stream never came are given up, as upstream does.
                for (_, half) in halves.extract_if(|_, h| h.since.elapsed() > PAIR_TIMEOUT) {
                    if half.error {
                        let message = b"timed out waiting for streams".to_vec();
                        let _ = out.send(Out::Data(half.stream, message)).await;
                    }
                    let _ = out.send(Out::Fin(half.stream)).await;
                }
                inbound.retain(|_, i| !i.tx.is_closed());
                continue;
            }
        };
        match frame {
            Frame::Stream {
                kind: spdy::SYN_STREAM,
                stream,
                block,
                ..
            } => {
                let pairs = match headers.decode(&block) {
                    Ok(pairs) => pairs,
                    Err(e) => {
                        tracing::debug!(error = %e, "port-forward: bad header block");
                        break;
                    }
                };
                let get = |name: &str| {
                    pairs
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                };
                let port = get("port").and_then(|p| p.parse::<u16>().ok());
                let error = match get("streamtype").as_deref() {
                    Some("error") => true,
                    Some("data") => false,
                    _ => {
                        let _ = out.send(Out::Reset(stream, spdy::PROTOCOL_ERROR)).await;
                        continue;
                    }
                };
                let (Some(port), Some(request)) = (port.filter(|p| *p > 0), get("requestid"))
                else {
                    let _ = out.send(Out::Reset(stream, spdy::PROTOCOL_ERROR)).await;
                    continue;
                };
                if out.send(Out::Reply(stream)).await.is_err() {
                    break;
                }
                let Some(first) = halves.remove(&request) else {
                    let since = Instant::now();
                    halves.insert(
                        request,
                        Half {
                            stream,
                            error,
                            port,
                            since,
                        },
                    );
                    continue;
                };
                if first.error == error {
                    let _ = out.send(Out::Reset(stream, spdy::PROTOCOL_ERROR)).await;
                    halves.insert(request, first);
                    continue;
                }
                let (data, error, port) = if error {
                    (first.stream, stream, first.port)
                } else {
                    (stream, first.stream, port)
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                inbound.insert(
                    data,
                    Inbound {
                        tx,
                        pending: pending.clone(),
                    },
                );
                let netns = forward.netns.clone();
                let pair = Pair {
                    port,
                    data,
                    error,
                    pending,
                };
                tasks.spawn(forward_pair(netns, pair, rx, out.clone()));
            }
            // Header blocks share one compression context: every one is read.
            Frame::Stream { block, .. } => {
                if headers.decode(&block).is_err() {
                    break;
                }
            }
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                if !data.is_empty()
                    && let Some(inbound_stream) = inbound.get(&stream)
                    && !inbound_stream.deliver(data)
                {
                    // The pod does not read what the client sends: the stream goes,
                    // rather than the session's memory or its other streams.
                    inbound.remove(&stream);
                    let _ = out.send(Out::Reset(stream, spdy::FLOW_CONTROL_ERROR)).await;
                }
                if flags & spdy::FIN != 0 {
                    inbound.remove(&stream);
                }
            }
            Frame::Reset { stream, .. } => {
                inbound.remove(&stream);
            }
            Frame::Ping(id) => {
                let _ = out.send(Out::Ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Other(_) => {}
        }
    }
    reading.abort();
    tasks.abort_all();
    drop(out);
    let _ = writing.await;
}

/// Bytes from the client not yet written to the pod, at most this many per stream.
const MAX_PENDING: usize = 4 << 20;

/// The client's side of a data stream.
struct Inbound {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl Inbound {
    /// Queues bytes for the pod; false when too much is waiting already.
    fn deliver(&self, data: Vec<u8>) -> bool {
        use std::sync::atomic::Ordering;
        let len = data.len();
        if self.pending.fetch_add(len, Ordering::AcqRel) + len > MAX_PENDING {
            return false;
        }
        self.tx.send(data).is_ok()
    }
}

/// A complete pair: its port, its two streams, and the client's bytes in flight.
struct Pair {
    port: u16,
    data: u32,
    error: u32,
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

/// One forwarded connection: the pod's port joined to a data stream; a failure to
/// connect is written on the error stream. Both streams end when the connection does.
async fn forward_pair(
    netns: Option<std::path::PathBuf>,
    pair: Pair,
    mut from_client: mpsc::UnboundedReceiver<Vec<u8>>,
    out: mpsc::Sender<Out>,
) {
    let Pair {
        port,
        data,
        error,
        pending,
    } = pair;
    let tcp = match connect_in(netns, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod: {e}");
            let _ = out.send(Out::Data(error, message.into_bytes())).await;
            let _ = out.send(Out::Fin(data)).await;
            let _ = out.send(Out::Fin(error)).await;
            return;
        }
    };
    let (mut pod_read, mut pod_write) = tcp.into_split();
    let up = async move {
        while let Some(bytes) = from_client.recv().await {
            if pod_write.write_all(&bytes).await.is_err() {
                return;
            }
            pending.fetch_sub(bytes.len(), std::sync::atomic::Ordering::AcqRel);
        }
        let _ = pod_write.shutdown().await;
    };
    let down_out = out.clone();
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = pod_read.read(&mut buf).await {
            if n == 0
                || down_out
                    .send(Out::Data(data, buf[..n].to_vec()))
                    .await
                    .is_err()
            {
                break;
            }
        }
    };
    tokio::pin!(up, down);
    let pod_done_first = tokio::select! {
        _ = &mut up => {
            let _ = tokio::time::timeout(LINGER, &mut down).await;
            false
        }
        _ = &mut down => true,
    };
    // Both streams end as soon as the pod's side has: kubectl closes its local
    // connection once the error stream has ended, and waiting for it would hold the
    // client's connection open.
    let _ = out.send(Out::Fin(data)).await;
    let _ = out.send(Out::Fin(error)).await;
    if pod_done_first {
        let _ = tokio::time::timeout(LINGER, &mut up).await;
    }
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
            // `localhost`, as containerd dials it: IPv4 first, then IPv6.
            let v4 = SocketAddr::from(([127, 0, 0, 1], port));
            match std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(5)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                    std::net::TcpStream::connect_timeout(&v6, Duration::from_secs(5)).map_err(|_| e)
                }
                result => result,
            }
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
