//! TLS for both listeners (`[serving] tls_cert`, `tls_key`): rustls with the ring provider, the
//! certificate chain and key read from PEM files at start. A certificate or key that does not load
//! stops the process with what is wrong: never plaintext in its place.
//!
//! HTTP over TLS runs axum's router on hyper's connection server (`serve_https`), with the same
//! graceful shutdown as plaintext: stop accepting, let requests in flight finish within the drain
//! time. The Postgres wire takes the same acceptor (pgwire answers `SSLRequest` with it).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::ServerConfig;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::crypto::ring;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::pki_types::pem::PemObject;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate chain {path}: {reason} (tls_cert must be a PEM file)")]
    Certificate { path: String, reason: String },
    #[error("reading the private key {path}: {reason} (tls_key must be a PEM file)")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// The acceptor of `cert` (PEM chain) and `key` (PEM private key).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certificate = |reason: String| TlsError::Certificate {
        path: cert.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| certificate(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificate("no certificate in it".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` over TLS on `listener` until `stop`; then lets requests in flight finish for at
/// most `drain`.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an HTTPS connection failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = router
            .clone()
            .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match acceptor.accept(socket).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "a TLS handshake failed");
                    return;
                }
            };
            let builder = Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "an HTTPS connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTPS requests still running after {drain:?} were cut");
    }
}
