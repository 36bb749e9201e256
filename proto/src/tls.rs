//! TLS with mutual authentication on every gRPC port: each side presents a
//! certificate of the cluster's authority (see `daskrs_core::certs`) and
//! checks the other's against it, under the one name
//! [`SERVER_NAME`] every certificate of the cluster carries.
//!
//! A process reads its files from a directory laid out as a Kubernetes TLS
//! Secret mounted as a volume: `ca.crt`, `tls.crt` and `tls.key`. They are
//! read again when they change (the operator renews certificates before
//! they expire and the kubelet swaps the files in place), so new
//! connections use the new certificate while open ones go on undisturbed.
//!
//! A plain-text gRPC client reaching a TLS port gets an answer it can
//! show, not a reset connection: the server looks at a new connection's
//! first byte and answers plain HTTP/2 with an error that names TLS.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The name every certificate of a cluster carries and every peer checks.
pub const SERVER_NAME: &str = "daskrs";
/// The environment variable naming the directory of a process's TLS files.
pub const TLS_DIR_ENV: &str = "DASKRS_TLS_DIR";
/// The files of that directory: the cluster's authority, this process's
/// certificate (chain) and its private key, all PEM.
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Longest a peer may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("the TLS file {path} holds no PEM {what}")]
    Missing { path: String, what: &'static str },
    #[error("the TLS files in {dir} do not make a TLS configuration: {source}")]
    Config { dir: String, source: rustls::Error },
}

/// A process's TLS files, read again when they change.
#[derive(Clone)]
pub struct Tls(Arc<Inner>);

struct Inner {
    dir: PathBuf,
    current: Mutex<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    stamp: Vec<Option<SystemTime>>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tls").field(&self.0.dir).finish()
    }
}

impl Tls {
    /// The TLS files of `dir`, which must all be there and valid.
    pub fn load(dir: &Path) -> Result<Tls, TlsError> {
        let loaded = read(dir)?;
        Ok(Tls(Arc::new(Inner {
            dir: dir.to_path_buf(),
            current: Mutex::new(loaded),
        })))
    }

    /// The TLS files of `dir` if given, else of the directory
    /// `DASKRS_TLS_DIR` names if set, else none.
    pub fn from_dir_or_env(dir: Option<&Path>) -> Result<Option<Tls>, TlsError> {
        match dir {
            Some(d) => Tls::load(d).map(Some),
            None => match std::env::var_os(TLS_DIR_ENV) {
                Some(d) if !d.is_empty() => Tls::load(Path::new(&d)).map(Some),
                _ => Ok(None),
            },
        }
    }

    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// The configuration of the files as they are now: read again if they
    /// changed since last time; if they cannot be read (the kubelet is
    /// halfway through replacing them), the last good one.
    fn current(&self) -> Loaded {
        let mut current = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamp(&self.0.dir) != current.stamp {
            match read(&self.0.dir) {
                Ok(fresh) => {
                    tracing::info!(dir = %self.0.dir.display(), "TLS files changed; new connections use them");
                    *current = fresh;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous ones")
                }
            }
        }
        current.clone()
    }

    /// Completes the server side of a handshake on an accepted connection.
    async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current().server);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// Connects to `host:port` and completes the client side of a handshake.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(self.current().client);
        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp));
        match handshake.await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(io::Error::new(
                source.kind(),
                Handshake {
                    peer: format!("{host}:{port}"),
                    source,
                },
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake with {host}:{port} timed out"),
            )),
        }
    }
}

/// A failed client handshake, naming the server.
#[derive(Debug, thiserror::Error)]
#[error(
    "TLS handshake with {peer} failed: {source} (does the server take TLS, with a certificate \
     of this cluster's authority?)"
)]
struct Handshake {
    peer: String,
    source: io::Error,
}

/// Whether an error, or any error it came from, is a peer's refusal of a
/// certificate (ours or theirs is not of the same authority): trying again
/// with the same files cannot help.
pub fn refused_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let refusal = |e: &rustls::Error| {
        use rustls::AlertDescription as A;
        match e {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
            rustls::Error::AlertReceived(a) => matches!(
                a,
                A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown
                    | A::UnknownCA
                    | A::CertificateRequired
                    | A::DecryptError
            ),
            _ => false,
        }
    };
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>()
            && refusal(r)
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            let inner = io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static));
            if inner.is_some_and(refused_certificate) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

fn stamp(dir: &Path) -> Vec<Option<SystemTime>> {
    [CA_FILE, CERT_FILE, KEY_FILE]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
}

fn read(dir: &Path) -> Result<Loaded, TlsError> {
    let stamp = stamp(dir);
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path)
            .map(|b| (b, path.display().to_string()))
            .map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
    };
    let certs =
        |(bytes, path): (Vec<u8>, String)| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .collect();
            if certs.is_empty() {
                return Err(TlsError::Missing {
                    path,
                    what: "certificate",
                });
            }
            Ok(certs)
        };
    let authority = certs(file(CA_FILE)?)?;
    let chain = certs(file(CERT_FILE)?)?;
    let (key_bytes, key_path) = file(KEY_FILE)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| TlsError::Missing {
        path: key_path,
        what: "private key",
    })?;
    let invalid = |source| TlsError::Config {
        dir: dir.display().to_string(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for c in authority {
        roots.add(c).map_err(invalid)?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| invalid(rustls::Error::General(e.to_string())))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(invalid)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(invalid)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        stamp,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// A connection a server accepted: TLS, or plain when the server takes
/// plain text; it holds its peer's place among the server's connections.
pub struct ServerIo {
    io: Io,
    _slot: crate::net::Slot,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match &self.io {
            Io::Plain(s) => s.connect_info(),
            Io::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Takes a connection a server accepted, for the gRPC server if it is one
/// for it: as it is, for a server without TLS; else once its handshake is
/// complete. Plain-text HTTP/2 to a TLS server is answered with an error
/// that names TLS (on a task of its own); anything else is dropped. With
/// `slot` `Err`, the peer holds too many connections: the call is answered
/// with that error instead.
pub(crate) async fn admit(
    tls: Option<&Tls>,
    tcp: TcpStream,
    slot: Result<crate::net::Slot, String>,
) -> Option<ServerIo> {
    let Some(tls) = tls else {
        return match slot {
            Ok(slot) => Some(ServerIo {
                io: Io::Plain(tcp),
                _slot: slot,
            }),
            Err(why) => {
                tokio::spawn(refuse(tcp, tonic::Code::ResourceExhausted, why));
                None
            }
        };
    };
    let peer = tcp.peer_addr().ok();
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return None;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let why = PLAIN_TEXT_REFUSED.to_string();
        tokio::spawn(refuse(tcp, tonic::Code::FailedPrecondition, why));
        return None;
    }
    let stream = match tls.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(peer = ?peer, error = %e, "TLS handshake refused");
            return None;
        }
    };
    match slot {
        Ok(slot) => Some(ServerIo {
            io: Io::Tls(Box::new(stream)),
            _slot: slot,
        }),
        Err(why) => {
            tokio::spawn(refuse(stream, tonic::Code::ResourceExhausted, why));
            None
        }
    }
}

/// What a plain-text gRPC call to a TLS port is answered with.
pub const PLAIN_TEXT_REFUSED: &str = "this daskrs server takes TLS connections only: give the client \
     the cluster's certificates (--tls-dir or DASKRS_TLS_DIR: a directory of ca.crt, tls.crt and tls.key)";

/// Answers every gRPC call of an HTTP/2 connection with `code` and
/// `message`, then closes it.
async fn refuse<I>(io: I, code: tonic::Code, message: String)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |_request| {
        let message = message.clone();
        async move {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", (code as i32).to_string())
                .header("grpc-message", message)
                .body(String::new())
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await;
}
