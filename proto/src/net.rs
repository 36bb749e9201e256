//! Every gRPC channel and server is built here, so message limits, keepalives
//! and timeouts are set once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};

use crate::auth::{Bearer, Token};
use crate::tls::{ServerIo, Tls};

/// A channel whose calls carry the cluster token (when there is one).
pub type Conn = InterceptedService<Channel, Bearer>;

/// Largest single message. Bulk data moves as streams of [`crate::chunks::CHUNK_SIZE`]
/// chunks, so only a huge graph submission comes near this.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
#[error("invalid address {address:?}: {source}")]
pub struct AddressError {
    address: String,
    source: tonic::transport::Error,
}

/// An endpoint for `host:port` or a full `http://` URL.
pub fn endpoint(address: &str) -> Result<Endpoint, AddressError> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Endpoint::from_shared(uri)
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .http2_adaptive_window(true)
        })
        .map_err(|source| AddressError {
            address: address.to_string(),
            source,
        })
}

/// Connects now, failing after [`CONNECT_TIMEOUT`]; calls carry `token`,
/// over TLS with `tls`'s certificates when given.
pub async fn connect(
    address: &str,
    token: Option<&Token>,
    tls: Option<&Tls>,
) -> Result<Conn, ConnectError> {
    let ep = endpoint(address).map_err(ConnectError::Address)?;
    let connected = match tls {
        None => ep.connect().await,
        Some(tls) => ep.connect_with_connector(connector(tls.clone())).await,
    };
    let channel = connected.map_err(|source| ConnectError::Unreachable {
        address: address.to_string(),
        source,
    })?;
    Ok(InterceptedService::new(channel, Bearer::new(token)))
}

/// A channel that connects on first use and reconnects after failures.
pub fn connect_lazy(
    address: &str,
    token: Option<&Token>,
    tls: Option<&Tls>,
) -> Result<Conn, AddressError> {
    let ep = endpoint(address)?;
    let channel = match tls {
        None => ep.connect_lazy(),
        Some(tls) => ep.connect_with_connector_lazy(connector(tls.clone())),
    };
    Ok(InterceptedService::new(channel, Bearer::new(token)))
}

/// Opens connections for a channel: TCP, then TLS with `tls`'s files.
fn connector(
    tls: Tls,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let host = uri.host().unwrap_or_default();
            // An IPv6 literal comes bracketed.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            tls.connect(&host, port)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    })
}

/// Channels to peers, one per address, made on first use and shared by
/// every task that talks to that peer (HTTP/2 multiplexes their calls).
/// Their calls carry the cluster's token.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Conn>>>,
    token: Option<Token>,
    tls: Option<Tls>,
}

impl Channels {
    pub fn new(token: Option<Token>, tls: Option<Tls>) -> Channels {
        Channels {
            inner: Default::default(),
            token,
            tls,
        }
    }

    pub fn get(&self, address: &str) -> Result<Conn, AddressError> {
        // A panic elsewhere while holding the lock leaves a plain map behind.
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(address) {
            return Ok(c.clone());
        }
        let c = connect_lazy(address, self.token.as_ref(), self.tls.as_ref())?;
        m.insert(address.to_string(), c.clone());
        Ok(c)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Address(AddressError),
    #[error("cannot reach {address}: {source}")]
    Unreachable {
        address: String,
        source: tonic::transport::Error,
    },
}

/// Writes the ports a server listens on to `path` as one JSON object
/// (`{"grpc": 40123, "http": 40124}`), whole or not at all: whoever started
/// the server with port 0 learns what it got, and never reads half a file.
pub fn write_port_file(path: &std::path::Path, ports: &[(&str, u16)]) -> std::io::Result<()> {
    let body: Vec<String> = ports
        .iter()
        .map(|(name, port)| format!("\"{name}\": {port}"))
        .collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{{{}}}\n", body.join(", ")))?;
    std::fs::rename(&tmp, path)
}

/// Most calls (HTTP/2 streams) one connection may have open at once; a
/// client asks for more only once one ends.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// A server with the same limits as the channels.
pub fn server() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_adaptive_window(Some(true))
}

/// A service that refuses calls without `token` (when there is one).
pub fn guarded<S>(svc: S, token: Option<Token>) -> InterceptedService<S, crate::auth::Guard> {
    InterceptedService::new(svc, crate::auth::Guard::new(token))
}

/// Applies the message limits to a generated client or server.
#[macro_export]
macro_rules! limits {
    ($svc:expr) => {
        $svc.max_decoding_message_size($crate::net::MAX_MESSAGE_BYTES)
            .max_encoding_message_size($crate::net::MAX_MESSAGE_BYTES)
    };
}

/// The connections a server started with `serve_with_incoming` serves.
pub type Incoming = Pin<Box<dyn Stream<Item = std::io::Result<ServerIo>> + Send>>;

/// Most connections one address may hold open to a server at once.
pub const MAX_CONNECTIONS_PER_PEER: usize = 1024;

/// Accepted connections for a server started with `serve_with_incoming`,
/// with the same socket options as [`server`] (which only applies them to
/// listeners it binds itself); with `tls`, only those that complete a TLS
/// handshake with a certificate of the cluster (see [`crate::tls`]). A
/// peer address holds at most [`MAX_CONNECTIONS_PER_PEER`]; calls on one
/// more are answered `RESOURCE_EXHAUSTED`, saying so.
pub fn incoming(listener: tokio::net::TcpListener, tls: Option<Tls>) -> Incoming {
    incoming_limited(listener, tls, MAX_CONNECTIONS_PER_PEER)
}

/// [`incoming`] with at most `per_peer` connections from one address.
pub fn incoming_limited(
    listener: tokio::net::TcpListener,
    tls: Option<Tls>,
    per_peer: usize,
) -> Incoming {
    let accepted = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_INTERVAL));
    let peers = Peers {
        open: Default::default(),
        most: per_peer,
    };
    // Connections are admitted side by side (TLS handshakes take a while),
    // so a slow or silent peer holds up no other.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = accepted;
        loop {
            let next = tokio::select! {
                n = accepted.next() => n,
                _ = tx.closed() => return,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    // Out of descriptors, say: give the process a moment.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(Ok(tcp)) => {
                    let slot = peers.take(&tcp);
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(io) = crate::tls::admit(tls.as_ref(), tcp, slot).await {
                            let _ = tx.send(Ok(io)).await;
                        }
                    });
                }
            }
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Open connections per peer address.
struct Peers {
    open: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    most: usize,
}

impl Peers {
    /// A place for `tcp`'s peer, or why there is none.
    fn take(&self, tcp: &tokio::net::TcpStream) -> Result<Slot, String> {
        let ip = tcp
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.most {
            return Err(format!(
                "too many connections from {ip}: this server takes at most {} from one address",
                self.most
            ));
        }
        *n += 1;
        Ok(Slot {
            open: self.open.clone(),
            ip,
        })
    }
}

/// A connection's place among its peer's; given back when it closes.
pub(crate) struct Slot {
    open: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler_client::SchedulerClient;

    /// A call on a new connection: the server's answer (no service here).
    async fn call(address: &str) -> (Conn, tonic::Status) {
        let channel = connect(address, None, None).await.unwrap();
        let status = SchedulerClient::new(channel.clone())
            .cluster_info(crate::ClusterInfoRequest::default())
            .await
            .unwrap_err();
        (channel, status)
    }

    #[tokio::test]
    async fn a_peer_over_its_connection_limit_is_told_so_until_one_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            server()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(incoming_limited(listener, None, 2)),
        );
        let (first, served) = call(&address).await;
        assert_eq!(served.code(), tonic::Code::Unimplemented, "{served:?}");
        let (_second, served) = call(&address).await;
        assert_eq!(served.code(), tonic::Code::Unimplemented, "{served:?}");
        let (_, refused) = call(&address).await;
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(
            refused
                .message()
                .contains("too many connections from 127.0.0.1"),
            "{}",
            refused.message()
        );
        // Once the first closes, its place is free again.
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, status) = call(&address).await;
            if status.code() == tonic::Code::Unimplemented {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the closed connection's place was never given back"
            );
            // Poll again shortly: the server hears of the close on its own time.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
