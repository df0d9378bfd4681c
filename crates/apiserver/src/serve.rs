//! The HTTPS listener: our own rustls accept loop (so later work can see client
//! certificates per connection) feeding hyper's automatic HTTP/1.1 + HTTP/2 server.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::handler::State;
use crate::pki::Pki;

/// The server's TLS configuration; its certificate can be swapped while it serves.
pub(crate) fn tls_config(
    pki: &Pki,
) -> Result<(Arc<rustls::ServerConfig>, Arc<crate::rotation::Swappable>), Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem_err =
        |e: rustls::pki_types::pem::Error| Error::Tls(rustls::Error::General(e.to_string()));
    let serving = crate::rotation::Swappable::new(crate::rotation::certified_key(
        &[&pki.serving_cert_pem, &pki.ca_cert_pem],
        &pki.serving_key_pem,
    )?);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(ca.map_err(pem_err)?).map_err(Error::Tls)?;
    }
    // Client certificates are verified when presented; requests without one are
    // anonymous (authentication and authorization decide what they may do).
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), serving))
}

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: State,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = crate::handler::router(state);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            // The client certificate (verified in the handshake) names the user.
            let peer_user = crate::authn::PeerUser(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|cert| crate::authn::certificate_user(cert)),
            );
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    request.extensions_mut().insert(peer_user.clone());
                    request
                        .extensions_mut()
                        .insert(crate::audit::PeerAddr(peer));
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            tower::ServiceExt::oneshot(app, request)
                                .await
                                .unwrap_or_else(|e| match e {}),
                        )
                    }
                },
            );
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
