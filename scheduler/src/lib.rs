//! The daskrs scheduler: the task-graph state machine (`state`), the gRPC
//! services for clients and workers (`service`), and the HTTP endpoints for
//! metrics, health and the operator's JSON API (`http`).
//!
//! The state machine is synchronous and does no I/O; the services decode,
//! call it under one lock, and send what it put in its outbox. It never
//! moves bulk data between workers: it only says who holds what. It must not
//! depend on the worker or the client.

pub mod http;
pub mod metrics;
pub mod service;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::service::Core;
use crate::state::{State, StateConfig};

/// How long a stopping scheduler waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Adaptive scaling aims for about this much queued work per thread.
pub const ADAPTIVE_TARGET_SECONDS: f64 = 5.0;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// gRPC for clients and workers.
    pub listen: SocketAddr,
    /// HTTP for metrics, health and the JSON API; `None` serves nothing.
    pub http_listen: Option<SocketAddr>,
    pub heartbeat_interval: Duration,
    /// A worker silent this long is removed and its work rescheduled.
    pub worker_ttl: Duration,
    /// How SQL planning reaches S3 (schemas, file listings).
    pub s3: daskrs_engine::S3Settings,
    /// The cluster token every call must present (see `daskrs_proto::auth`);
    /// `None` admits anyone who can reach the ports.
    pub token: Option<daskrs_proto::auth::Token>,
    /// The certificates of TLS with clients and workers, required of every
    /// caller (see `daskrs_proto::tls`). `None` for plain text.
    pub tls: Option<daskrs_proto::tls::Tls>,
    /// Serve `/metrics` without the token, for scrapers.
    pub open_metrics: bool,
    /// The most tasks held at once (see `StateConfig::max_tasks`).
    pub max_tasks: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            listen: ([0, 0, 0, 0], 8786).into(),
            http_listen: Some(([0, 0, 0, 0], 8787).into()),
            heartbeat_interval: Duration::from_secs(1),
            worker_ttl: Duration::from_secs(30),
            max_tasks: state::DEFAULT_MAX_TASKS,
            s3: Default::default(),
            token: None,
            tls: None,
            open_metrics: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A running scheduler.
pub struct Scheduler {
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub core: Arc<Core>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Scheduler {
    /// Binds its ports and starts serving until `shutdown` turns true.
    pub async fn start(
        config: SchedulerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Scheduler, Error> {
        let state = State::new(StateConfig {
            worker_ttl: config.worker_ttl,
            max_tasks: config.max_tasks,
            ..StateConfig::default()
        });
        let core = Core::new(
            state,
            config.heartbeat_interval,
            daskrs_proto::net::Channels::new(config.token.clone(), config.tls.clone()),
        );
        let s3 = daskrs_engine::S3Access::load(&config.s3).await;
        let planner = Arc::new(daskrs_engine::Planner::new(Some(s3)));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let grpc_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        let http = match config.http_listen {
            Some(addr) => Some(
                http::serve(
                    addr,
                    core.clone(),
                    config.token.clone(),
                    config.open_metrics,
                )
                .await
                .map_err(|source| Error::Listen { addr, source })?,
            ),
            None => None,
        };
        let http_addr = http.as_ref().map(|h| h.1);
        let ticker = tokio::spawn(core.clone().tick_forever());
        let clients = daskrs_proto::limits!(daskrs_proto::scheduler_server::SchedulerServer::new(
            service::client::ClientService {
                core: core.clone(),
                planner,
            }
        ));
        let workers = daskrs_proto::limits!(
            daskrs_proto::worker_control_server::WorkerControlServer::new(
                service::worker::WorkerService { core: core.clone() }
            )
        );
        let clients = daskrs_proto::net::guarded(clients, config.token.clone());
        let workers = daskrs_proto::net::guarded(workers, config.token.clone());
        tracing::info!(grpc = %grpc_addr, http = ?http_addr, token = config.token.is_some(), tls = config.tls.is_some(), worker_ttl_s = config.worker_ttl.as_secs_f64(), "scheduler listening");
        let mut stop = shutdown;
        let mut stopped = stop.clone();
        let drain = core.clone();
        let task = tokio::spawn(async move {
            let server = daskrs_proto::net::server()
                .add_service(clients)
                .add_service(workers)
                .serve_with_incoming_shutdown(
                    daskrs_proto::net::incoming(listener, config.tls.clone()),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                        // Streams stay open until their senders go: end them all, so
                        // workers start reconnecting and clients hear the scheduler left.
                        drain.with(|i| {
                            i.workers.clear();
                            i.clients.clear();
                        });
                    },
                );
            let served = tokio::select! {
                r = server => r,
                _ = async {
                    let _ = stopped.wait_for(|s| *s).await;
                    tokio::time::sleep(DRAIN_TIMEOUT).await;
                } => {
                    tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "connections still open; stopping anyway");
                    Ok(())
                }
            };
            ticker.abort();
            if let Some((h, _)) = http {
                h.abort();
            }
            served.map_err(Error::from)
        });
        Ok(Scheduler {
            grpc_addr,
            http_addr,
            core,
            task,
        })
    }

    /// Waits until the scheduler stops.
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "scheduler task ended abnormally");
                Ok(())
            }
        }
    }
}
