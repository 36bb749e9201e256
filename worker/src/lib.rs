//! The daskrs worker: runs the tasks the scheduler assigns on a pool of
//! threads, keeps results in a store that spills to disk, serves them to
//! peers, and reconnects with backoff when it loses the scheduler.
//!
//! It never talks to clients and never decides placement; task kinds come
//! from a [`kinds::Registry`] so other crates can add theirs. It must not
//! depend on the scheduler or the client.

pub mod data;
mod execute;
pub mod http;
pub mod kinds;
pub mod metrics;
pub mod peer;
pub mod pool;
pub mod python;
mod release;
pub mod session;
pub mod store;
mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use daskrs_engine::Error as TaskError;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::kinds::Registry;
use crate::metrics::Metrics;
use crate::session::{SessionEnd, Shared};
use crate::store::Store;
use daskrs_proto::net::Channels;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// host:port of the scheduler's gRPC service.
    pub scheduler: String,
    pub name: String,
    pub nthreads: u32,
    pub memory_limit: u64,
    /// Spilled results go to a fresh directory below this one.
    pub local_dir: PathBuf,
    /// Where the peer data service listens.
    pub listen: SocketAddr,
    /// Where `/metrics` and `/health` are served; `None` serves nothing.
    pub http_listen: Option<SocketAddr>,
    /// The address peers use to reach this worker; default: the listening
    /// address, with 127.0.0.1 for an unspecified host.
    pub contact_address: Option<String>,
    /// How long a shutting-down worker waits for its hand-off.
    pub shutdown_timeout: Duration,
    /// Pause when the whole process's resident memory passes the pause
    /// threshold, not only the results it manages. Off when several workers
    /// share one process (`daskrs local`).
    pub pause_on_process_memory: bool,
    /// Once listening, the peer and HTTP ports are written here (JSON).
    pub port_file: Option<PathBuf>,
    /// The cluster token: presented to the scheduler and peers, required of
    /// every caller of the peer service and of `/metrics` (see
    /// `daskrs_proto::auth`). `None` for a cluster without one.
    pub token: Option<daskrs_proto::auth::Token>,
    /// The certificates of TLS with the scheduler and peers, required of
    /// every caller of the peer service (see `daskrs_proto::tls`). `None`
    /// for plain text.
    pub tls: Option<daskrs_proto::tls::Tls>,
    /// Serve `/metrics` without the token, for scrapers.
    pub open_metrics: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the spill directory in {dir}: {source}")]
    LocalDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start task threads: {0}")]
    Threads(std::io::Error),
    #[error("the scheduler refused this worker: {0}")]
    Refused(String),
    #[error("peer data server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot write the port file {path}: {source}")]
    PortFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs a worker until `shutdown` turns true (then hands off its results and
/// exits) or the scheduler closes it.
pub async fn run(
    config: WorkerConfig,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    run_with(config, registry, Arc::new(store::FileWriter), shutdown).await
}

/// Like [`run`], with spilled results written through `spill`.
pub async fn run_with(
    config: WorkerConfig,
    registry: Registry,
    spill: Arc<dyn store::SpillWriter>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.local_dir).map_err(|source| Error::LocalDir {
        dir: config.local_dir.clone(),
        source,
    })?;
    let spill_dir = tempfile::Builder::new()
        .prefix("daskrs-worker-")
        .tempdir_in(&config.local_dir)
        .map_err(|source| Error::LocalDir {
            dir: config.local_dir.clone(),
            source,
        })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let address = config.contact_address.clone().unwrap_or_else(|| {
        let host = if bound.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            bound.ip().to_string()
        };
        format!("{host}:{}", bound.port())
    });
    let name = if config.name.is_empty() {
        address.clone()
    } else {
        config.name.clone()
    };
    let config = WorkerConfig {
        name: name.clone(),
        ..config
    };
    let store = Arc::new(Store::with_writer(
        config.memory_limit,
        spill_dir.path(),
        spill,
    ));
    let metrics = Arc::new(Metrics::new(&name));
    let (ready, ready_rx) = watch::channel(false);
    let pool = pool::Pool::new(config.nthreads as usize, &name).map_err(Error::Threads)?;
    let channels = Channels::new(config.token.clone(), config.tls.clone());
    let shared = Arc::new(Shared {
        pool,
        config: config.clone(),
        registry,
        store: store.clone(),
        metrics: metrics.clone(),
        fetcher: peer::Fetcher::new(channels.clone(), metrics.peer_calls.clone()),
        channels,
        address: address.clone(),
        ready,
        process_bytes: Default::default(),
    });
    tracing::info!(%name, %address, nthreads = config.nthreads, memory_limit = config.memory_limit, scheduler = %config.scheduler, "worker starting");

    let (stop_servers, stop_rx) = watch::channel(false);
    let peer = {
        let svc = daskrs_proto::limits!(daskrs_proto::peer_data_server::PeerDataServer::new(
            peer::PeerService {
                store: store.clone()
            }
        ));
        let svc = daskrs_proto::net::guarded(svc, config.token.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(
            daskrs_proto::net::server()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    daskrs_proto::net::incoming(listener, config.tls.clone()),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                ),
        )
    };
    let http = match config.http_listen {
        Some(addr) => Some(
            http::serve(
                addr,
                http::Access {
                    token: config.token.clone(),
                    open_metrics: config.open_metrics,
                },
                metrics.clone(),
                ready_rx,
                stop_rx.clone(),
            )
            .await?,
        ),
        None => None,
    };
    if let Some(path) = &config.port_file {
        let mut ports = vec![("peer", bound.port())];
        ports.extend(http.as_ref().map(|(_, a)| ("http", a.port())));
        daskrs_proto::net::write_port_file(path, &ports).map_err(|source| Error::PortFile {
            path: path.clone(),
            source,
        })?;
    }

    let guard = tokio::spawn(session::memory_guard(shared.clone(), stop_rx.clone()));
    let mut backoff = Duration::from_millis(100);
    let mut refused = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        match session::session(&shared, shutdown.clone()).await {
            SessionEnd::Closed => break,
            SessionEnd::Refused(reason) => {
                refused = Some(reason);
                break;
            }
            SessionEnd::Lost(reason) => {
                if *shutdown.borrow() {
                    break;
                }
                // Start clean: the scheduler forgot what this worker held.
                store.clear();
                tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "lost the scheduler; reconnecting");
                let mut sd = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = sd.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        backoff = backoff.min(Duration::from_secs(5));
    }
    let _ = stop_servers.send(true);
    let _ = guard.await;
    let _ = peer.await;
    if let Some((h, _)) = http {
        let _ = h.await;
    }
    if let Some(reason) = refused {
        return Err(Error::Refused(reason));
    }
    tracing::info!(%name, "worker stopped");
    Ok(())
}
