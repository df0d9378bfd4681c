//! The network handlers of probes and hooks, as upstream's prober runs them: httpGet
//! over HTTP/1.1 or HTTPS (the server's certificate is not verified, as upstream's
//! `InsecureSkipVerify`), tcpSocket, and grpc (the `grpc.health.v1.Health/Check`
//! call; `SERVING` passes). Each returns why it failed, in upstream's words where
//! users grep for them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{GRPCAction, HTTPGetAction, TCPSocketAction};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `kube-probe/1.33`, as upstream's prober introduces itself.
fn user_agent() -> String {
    format!(
        "kube-probe/{}.{}",
        skiff_api::KUBERNETES_VERSION.0,
        skiff_api::KUBERNETES_VERSION.1
    )
}

/// `host:port` with IPv6 addresses bracketed.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub async fn tcp(action: &TCPSocketAction, host: &str, port: u16) -> Result<(), String> {
    let host = action.host.as_deref().unwrap_or(host);
    tokio::net::TcpStream::connect((host, port))
        .await
        .map(drop)
        .map_err(|e| format!("dial tcp {}: {e}", authority(host, port)))
}

/// An HTTP(S) GET; 200-399 passes.
pub async fn http(action: &HTTPGetAction, host: &str, port: u16) -> Result<(), String> {
    let host = action.host.as_deref().unwrap_or(host);
    let https = action
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let address = authority(host, port);
    let url = format!("{}://{address}{path}", if https { "https" } else { "http" });
    // The probe's own headers replace the defaults of the same name.
    let headers = action.http_headers.as_deref().unwrap_or_default();
    let given = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in [
        ("Host", address.clone()),
        ("User-Agent", user_agent()),
        ("Accept", "*/*".to_string()),
    ] {
        if !given(name) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for header in headers {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("Connection: close\r\n");
    request.push_str("\r\n");
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {address}: {e}"))?;
    let code = if https {
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| format!("Get \"{url}\": {e}"))?;
        let stream = tls()
            .connect(name, stream)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        exchange(stream, &request).await
    } else {
        exchange(stream, &request).await
    }
    .map_err(|e| format!("Get \"{url}\": {e}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Sends `request` and reads the status line's code.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<u16, String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 1024];
    let mut read = 0;
    while read < head.len() && !head[..read].contains(&b'\n') {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })
}

/// The gRPC health check of `service` (the empty name unless the probe names one).
pub async fn grpc(action: &GRPCAction, host: &str, timeout: Duration) -> Result<(), String> {
    let port =
        u16::try_from(action.port).map_err(|_| format!("port {} is out of range", action.port))?;
    let address = authority(host, port);
    let service = action.service.clone().unwrap_or_default();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .user_agent(user_agent())
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "timeout: failed to connect service {address:?} within {}s: {e}",
            timeout.as_secs()
        )
    })?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await;
    match answer {
        Ok(response) => {
            let status = response.into_inner().status();
            if status == ServingStatus::Serving {
                Ok(())
            } else {
                Err(format!(
                    "service unhealthy (responded with {:?})",
                    status.as_str_name()
                ))
            }
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => Err(format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            status.message()
        )),
        Err(status) if status.code() == tonic::Code::DeadlineExceeded => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
        Err(status) => Err(format!(
            "error: health rpc probe failed: {}",
            status.message()
        )),
    }
}

/// A TLS connector that accepts any server certificate (signatures still checked),
/// as upstream's probes do.
fn tls() -> tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
                        .with_no_client_auth()
                });
            let config = match config {
                Ok(config) => config,
                // The ring provider supports the default versions; never reached.
                Err(_) => rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        })
        .clone()
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS server on loopback with a self-signed certificate answering `status`.
    async fn https_server(status: u16) -> u16 {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let status = if request.contains("User-Agent: kube-probe/") {
                        status
                    } else {
                        400
                    };
                    let _ = tls
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        port
    }

    fn get(port: u16) -> HTTPGetAction {
        HTTPGetAction {
            scheme: Some("HTTPS".into()),
            path: Some("/healthz".into()),
            port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn https_probes_accept_self_signed_servers_and_judge_the_status() {
        let ok = https_server(204).await;
        http(&get(ok), "127.0.0.1", ok).await.expect("204 passes");
        let bad = https_server(503).await;
        let message = http(&get(bad), "127.0.0.1", bad)
            .await
            .expect_err("503 fails");
        assert_eq!(message, "HTTP probe failed with statuscode: 503");
        // Plain HTTP to a TLS server is no HTTP answer.
        let mut plain = get(ok);
        plain.scheme = None;
        assert!(http(&plain, "127.0.0.1", ok).await.is_err());
    }

    #[tokio::test]
    async fn grpc_probes_report_the_health_service_answer() {
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let action = |service: Option<&str>| GRPCAction {
            port: port.into(),
            service: service.map(str::to_string),
        };
        let timeout = Duration::from_secs(2);
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        grpc(&action(None), "127.0.0.1", timeout)
            .await
            .expect("serving");
        reporter
            .set_service_status("db", tonic_health::ServingStatus::NotServing)
            .await;
        let message = grpc(&action(Some("db")), "127.0.0.1", timeout)
            .await
            .expect_err("not serving");
        assert_eq!(
            message,
            "service unhealthy (responded with \"NOT_SERVING\")"
        );
        let message = grpc(&action(Some("nope")), "127.0.0.1", timeout)
            .await
            .expect_err("unknown service");
        assert!(
            message.starts_with("error: health rpc probe failed"),
            "{message}"
        );
        // Nothing listening.
        drop(reporter);
        let closed = GRPCAction {
            port: 1,
            service: None,
        };
        let message = grpc(&closed, "127.0.0.1", timeout)
            .await
            .expect_err("refused");
        assert!(
            message.starts_with("timeout: failed to connect service"),
            "{message}"
        );
    }
}
