//! What the kubelet serves, proxied: `pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward` and `nodes/proxy`. The API server finds the pod's node,
//! reaches its kubelet API over HTTPS at the address and port the Node reports
//! (InternalIP, `daemonEndpoints.kubeletEndpoint.Port`), authenticating with its kubelet
//! client certificate from the cluster CA, and streams the answer back. The kubelet's
//! own certificate is not verified (upstream's default without
//! `--kubelet-certificate-authority`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

use crate::Error;
use crate::handler::State;
use crate::registry as reg;
use crate::status::ApiError;

/// The log options `kubectl logs` sends, passed on as they came.
const LOG_OPTIONS: [&str; 7] = [
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

#[derive(Clone)]
pub(crate) struct Client {
    tls: tokio_rustls::TlsConnector,
    /// The client certificate, renewed while the server runs.
    pub(crate) identity: Arc<crate::rotation::Swappable>,
}

/// Accepts the kubelet's self-signed serving certificate; signatures are still checked.
#[derive(Debug)]
struct AnyKubelet(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyKubelet {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Client {
    pub(crate) fn new(pki: &crate::pki::Pki) -> Result<Client, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = crate::rotation::Swappable::new(crate::rotation::certified_key(
            &[&pki.kubelet_client_cert_pem],
            &pki.kubelet_client_key_pem,
        )?);
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyKubelet(provider)))
            .with_client_cert_resolver(identity.clone());
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            identity,
        })
    }

    /// GET `path` on a kubelet; the response, its body still streaming. Upgrade
    /// requests carry their headers through and may switch protocols.
    async fn send(
        &self,
        host: &str,
        port: u16,
        path: &str,
        upgrade: Option<&axum::http::HeaderMap>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let url = format!("https://{host}:{port}{path}");
        let fail = |e: &dyn std::fmt::Display| format!("Get \"{url}\": {e}");
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| fail(&"dial timeout"))?
        .map_err(|e| fail(&e))?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| fail(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(&e))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let mut request = hyper::Request::get(path).header(header::HOST, format!("{host}:{port}"));
        if let Some(headers) = upgrade {
            for name in skiff_api::query::UPGRADE_HEADERS {
                for value in headers.get_all(name) {
                    request = request.header(name, value);
                }
            }
        }
        let request = request.body(Body::empty()).map_err(|e| fail(&e))?;
        sender.send_request(request).await.map_err(|e| fail(&e))
    }
}

impl Client {
    /// Forwards an upgrade request to a kubelet and splices the two upgraded
    /// connections; a refusal comes back as the kubelet's error.
    async fn upgrade(
        &self,
        host: &str,
        port: u16,
        path: &str,
        mut request: axum::extract::Request,
    ) -> Result<Response, ApiError> {
        let fail = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
        let client_upgrade = hyper::upgrade::on(&mut request);
        let mut response = self
            .send(host, port, path, Some(request.headers()))
            .await
            .map_err(|e| fail(&e))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(response).await);
        }
        let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        let server_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else {
                return;
            };
            splice(client, server).await;
        });
        answer.body(Body::empty()).map_err(|e| fail(&e))
    }
}

/// Where a node's kubelet API is: its InternalIP (else first address) and port.
fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addresses = node["status"]["addresses"].as_array()?;
    let address = addresses
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addresses.first())?["address"]
        .as_str()?
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)?;
    Some((address, port))
}

/// Where the named node's kubelet API is.
async fn node_endpoint(state: &State, node_name: &str) -> Result<(String, u16), ApiError> {
    let nodes = reg::find("", "v1", "nodes").ok_or_else(ApiError::path_not_found)?;
    let node = state.registry.get(nodes, None, node_name).await?;
    kubelet_address(&node).ok_or_else(|| {
        ApiError::bad_request(format!(
            "node {node_name} does not report a kubelet endpoint"
        ))
    })
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// The pod and where its node's kubelet API is, with upstream's errors when there is
/// no such thing.
async fn locate_pod(state: &State, ns: &str, name: &str) -> Result<(Value, String, u16), ApiError> {
    let pods = reg::find("", "v1", "pods").ok_or_else(ApiError::path_not_found)?;
    let pod = state.registry.get(pods, Some(ns), name).await?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let (host, port) = node_endpoint(state, node_name).await?;
    Ok((pod, host, port))
}

/// The pod's container (`container`, or its only one) and where its node's kubelet
/// API is, with upstream's errors when there is no such thing.
async fn locate(
    state: &State,
    ns: &str,
    name: &str,
    container: Option<&str>,
) -> Result<(String, String, u16), ApiError> {
    let (pod, host, port) = locate_pod(state, ns, name).await?;
    let containers = names(&pod["spec"]["containers"]);
    let mut all = containers.clone();
    all.extend(names(&pod["spec"]["initContainers"]));
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) if all.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    Ok((container, host, port))
}

/// A kubelet's refusal as the API server reports it.
async fn refusal(response: hyper::Response<hyper::body::Incoming>) -> ApiError {
    let status = response.status();
    let body = axum::body::to_bytes(Body::new(response.into_body()), 64 * 1024)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_string();
    if status.is_client_error() {
        ApiError::bad_request(message)
    } else {
        ApiError::internal(message)
    }
}

/// GET nodes/{name}/proxy/{path}: the kubelet API of that node, as it answers.
pub(crate) async fn node_proxy(
    state: &State,
    node_name: &str,
    path: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let (host, port) = node_endpoint(state, node_name).await?;
    let mut target = format!("/{path}");
    if !query.is_empty() {
        target.push('?');
        target.push_str(query);
    }
    let response = state
        .kubelets
        .send(&host, port, &target, None)
        .await
        .map_err(|e| {
            ApiError::service_unavailable(format!("error trying to reach the kubelet: {e}"))
        })?;
    let mut answer = Response::builder().status(response.status());
    if let Some(content_type) = response.headers().get(header::CONTENT_TYPE) {
        answer = answer.header(header::CONTENT_TYPE, content_type);
    }
    answer
        .body(Body::new(response.into_body()))
        .map_err(ApiError::internal)
}

/// GET pods/{name}/log.
pub(crate) async fn pod_log(
    state: &State,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (container, host, port) =
        locate(state, ns, name, query.get("container").map(String::as_str)).await?;
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let passed: Vec<String> = LOG_OPTIONS
        .iter()
        .filter_map(|key| query.get(*key).map(|v| format!("{key}={}", encode(v))))
        .collect();
    if !passed.is_empty() {
        path.push('?');
        path.push_str(&passed.join("&"));
    }
    let response = state
        .kubelets
        .send(&host, port, &path, None)
        .await
        .map_err(ApiError::internal)?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::new(response.into_body()))
        .map_err(ApiError::internal)
}

/// pods/{name}/exec and pods/{name}/attach: the client's connection upgrade (kubectl's
/// WebSocket) goes through to the kubelet, which takes it on to the runtime.
pub(crate) async fn pod_stream(
    state: &State,
    ns: &str,
    name: &str,
    kind: &str,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let pairs = skiff_api::query::pairs(request.uri().query().unwrap_or_default());
    let container = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    let (container, host, port) = locate(state, ns, name, container).await?;
    let on = |key: &str| {
        pairs
            .iter()
            .any(|(k, v)| k == key && (v == "true" || v == "1"))
    };
    let mut params: Vec<String> = Vec::new();
    if kind == "exec" {
        let commands: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        if commands.is_empty() {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        params.extend(commands.iter().map(|c| format!("command={}", encode(c))));
    }
    for (theirs, kubelets) in [
        ("stdin", "input"),
        ("stdout", "output"),
        ("stderr", "error"),
        ("tty", "tty"),
    ] {
        if on(theirs) {
            params.push(format!("{kubelets}=1"));
        }
    }
    let path = format!("/{kind}/{ns}/{name}/{container}?{}", params.join("&"));
    state.kubelets.upgrade(&host, port, &path, request).await
}

/// pods/{name}/portforward. kubectl tunnels SPDY through a WebSocket
/// (`SPDY/3.1+portforward.k8s.io`): that WebSocket ends here and its messages become
/// the byte stream of a SPDY upgrade to the kubelet. A plain SPDY upgrade, or a
/// WebSocket speaking the channel protocol with `ports` in the query, goes through as
/// it is.
pub(crate) async fn pod_port_forward(
    state: &State,
    ns: &str,
    name: &str,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (_, host, port) = locate_pod(state, ns, name).await?;
    let pairs = skiff_api::query::pairs(request.uri().query().unwrap_or_default());
    let mut ports = Vec::new();
    for value in pairs
        .iter()
        .filter(|(k, _)| k == "ports")
        .flat_map(|(_, v)| v.split(','))
    {
        match value.trim().parse::<u16>() {
            Ok(p) if p > 0 => ports.push(format!("port={p}")),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid port {value:?}: must be between 1 and 65535"
                )));
            }
        }
    }
    let mut path = format!("/portForward/{ns}/{name}");
    if !ports.is_empty() {
        path.push('?');
        path.push_str(&ports.join("&"));
    }
    let tunnelled = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == TUNNEL_PROTOCOL);
    if tunnelled {
        state.kubelets.tunnel(&host, port, &path, request).await
    } else {
        state.kubelets.upgrade(&host, port, &path, request).await
    }
}

/// The WebSocket subprotocol kubectl tunnels port-forward SPDY in.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

impl Client {
    /// Accepts the client's tunnelling WebSocket and carries its messages, as bytes,
    /// over a SPDY upgrade to the kubelet.
    async fn tunnel(
        &self,
        host: &str,
        port: u16,
        path: &str,
        request: axum::extract::Request,
    ) -> Result<Response, ApiError> {
        use axum::extract::FromRequestParts;
        let (mut parts, _) = request.into_parts();
        let websocket = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut spdy = axum::http::HeaderMap::new();
        spdy.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        spdy.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("SPDY/3.1"),
        );
        spdy.insert(
            "x-stream-protocol-version",
            header::HeaderValue::from_static("portforward.k8s.io"),
        );
        let mut response = self
            .send(host, port, path, Some(&spdy))
            .await
            .map_err(ApiError::internal)?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(response).await);
        }
        let kubelet = hyper::upgrade::on(&mut response);
        Ok(websocket
            .protocols([TUNNEL_PROTOCOL])
            .on_upgrade(move |socket| async move {
                if let Ok(kubelet) = kubelet.await {
                    carry(socket, kubelet).await;
                }
            }))
    }
}

/// Binary WebSocket messages one way, bytes the other, until either side ends.
async fn carry(socket: axum::extract::ws::WebSocket, kubelet: hyper::upgrade::Upgraded) {
    use axum::extract::ws::{CloseFrame, Message, close_code};
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sink, mut source) = socket.split();
    let (mut read, mut write) = tokio::io::split(TokioIo::new(kubelet));
    let to_kubelet = async move {
        while let Some(Ok(message)) = source.next().await {
            match message {
                // TLS keeps records back until flushed: each message goes out whole.
                Message::Binary(bytes)
                    if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() =>
                {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    let to_client = async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0
                || sink
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .is_err()
            {
                break;
            }
        }
        let close = CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
    };
    tokio::select! {
        _ = to_kubelet => {}
        _ = to_client => {}
    }
}

/// Percent-encodes what a query value may not carry as it is.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
