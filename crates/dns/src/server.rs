//! The DNS server: UDP and TCP on one port, answers from [`Records`], other names
//! forwarded to upstream resolvers (the reply relayed as it came), ExternalName
//! targets resolved upstream behind their CNAME as CoreDNS does.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::records::{Records, Resolution};

/// How long an upstream resolver has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer sent to a client that did not say (RFC 1035).
const PLAIN_UDP: usize = 512;
/// The EDNS buffer size offered and honoured at most (DNS flag day 2020).
const EDNS_UDP: u16 = 1232;

/// The answering side, shared by the UDP and TCP loops.
pub struct Resolver {
    pub records: Arc<RwLock<Records>>,
    pub upstreams: Vec<SocketAddr>,
}

/// Which transport a query came over (its answer's size limit).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Resolver {
    /// The answer to one query message (None: not worth answering).
    async fn answer(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                // Echo the id with FORMERR when there is a header to echo.
                let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.queries = request.queries.clone();
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_UDP);
            response.edns = Some(edns);
        }
        let limit = match (transport, &request.edns) {
            (Transport::Tcp, _) => u16::MAX as usize,
            (Transport::Udp, Some(edns)) => edns.max_payload().clamp(512, EDNS_UDP) as usize,
            (Transport::Udp, None) => PLAIN_UDP,
        };
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response.to_vec().ok();
        };
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response.to_vec().ok();
        }
        let resolution = match self.records.read() {
            Ok(records) => (
                records.resolve(query.name(), query.query_type()),
                records.soa(),
            ),
            Err(poisoned) => {
                let records = poisoned.into_inner();
                (
                    records.resolve(query.name(), query.query_type()),
                    records.soa(),
                )
            }
        };
        match resolution {
            (Resolution::Forward, _) => {
                return self.forward(packet, transport).await.or_else(|| {
                    response.metadata.response_code = ResponseCode::ServFail;
                    response.to_vec().ok()
                });
            }
            (Resolution::Answer(answers, additionals), _) => {
                response.metadata.authoritative = true;
                response.answers = answers;
                response.additionals = additionals;
            }
            (Resolution::NoData, soa) => {
                response.metadata.authoritative = true;
                response.authorities = vec![soa];
            }
            (Resolution::NxDomain, soa) => {
                response.metadata.authoritative = true;
                response.metadata.response_code = ResponseCode::NXDomain;
                response.authorities = vec![soa];
            }
            (Resolution::Alias(cname, target), _) => {
                response.metadata.authoritative = true;
                response.answers = vec![*cname];
                response
                    .answers
                    .extend(self.chase(&target, query.query_type()).await);
            }
        }
        let bytes = response.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
        // Too big for UDP: the client asks again over TCP.
        response.answers.clear();
        response.authorities.clear();
        response.additionals.clear();
        response.metadata.truncation = true;
        response.to_vec().ok()
    }

    /// An ExternalName's target, from the upstream resolvers (its records follow the
    /// CNAME; none when they do not answer).
    async fn chase(&self, target: &Name, qtype: RecordType) -> Vec<Record> {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(hickory_proto::op::Query::query(target.clone(), qtype));
        let Ok(packet) = message.to_vec() else {
            return Vec::new();
        };
        match self.forward(&packet, Transport::Udp).await {
            Some(reply) => Message::from_vec(&reply)
                .map(|m| m.answers)
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Sends `packet` to each upstream in turn; the first reply.
    async fn forward(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let reply = match transport {
                Transport::Udp => forward_udp(packet, *upstream).await,
                Transport::Tcp => forward_tcp(packet, *upstream).await,
            };
            match reply {
                Ok(reply) => return Some(reply),
                Err(e) => tracing::debug!(%upstream, error = %e, "upstream resolver"),
            }
        }
        None
    }
}

async fn forward_udp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 65_535];
    let id = packet.get(..2).unwrap_or_default();
    loop {
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        // Only the answer to this query (same id).
        if buf.get(..2) == Some(id) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        write_frame(&mut stream, packet).await?;
        read_frame(&mut stream).await
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u16().await?;
    let mut buf = vec![0u8; length as usize];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let length = u16::try_from(message.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"))?;
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

/// Answers UDP queries on `socket` until dropped.
pub async fn serve_udp(socket: UdpSocket, resolver: Arc<Resolver>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "receiving a DNS query");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let (socket, resolver) = (socket.clone(), resolver.clone());
        tokio::spawn(async move {
            if let Some(reply) = resolver.answer(&packet, Transport::Udp).await
                && let Err(e) = socket.send_to(&reply, peer).await
            {
                tracing::debug!(%peer, error = %e, "sending a DNS answer");
            }
        });
    }
}

/// Answers TCP queries (several per connection, RFC 7766) until dropped.
pub async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a DNS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            loop {
                let query =
                    match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream))
                        .await
                    {
                        Ok(Ok(query)) => query,
                        _ => return,
                    };
                let Some(reply) = resolver.answer(&query, Transport::Tcp).await else {
                    return;
                };
                if let Err(e) = write_frame(&mut stream, &reply).await {
                    tracing::debug!(%peer, error = %e, "sending a DNS answer");
                    return;
                }
            }
        });
    }
}

/// The name servers in a resolv.conf (`nameserver` lines), on port 53.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}
