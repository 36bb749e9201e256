//! A scheduler and N workers in one process: the embedded default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use daskrs_scheduler::{Scheduler, SchedulerConfig};
use daskrs_worker::WorkerConfig;
use daskrs_worker::kinds::Registry;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub workers: u32,
    pub threads_per_worker: u32,
    /// Per worker.
    pub memory_limit: u64,
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub local_dir: PathBuf,
    pub s3: daskrs_engine::S3Settings,
    /// The cluster token; `None` admits whoever reaches the ports.
    pub token: Option<daskrs_proto::auth::Token>,
    /// TLS between everyone, with these certificates; `None` for plain text.
    pub tls: Option<daskrs_proto::tls::Tls>,
}

pub struct LocalCluster {
    pub scheduler_addr: SocketAddr,
    pub token: Option<daskrs_proto::auth::Token>,
    pub tls: Option<daskrs_proto::tls::Tls>,
    pub http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    stop_scheduler: watch::Sender<bool>,
    scheduler: Scheduler,
    workers: Vec<tokio::task::JoinHandle<Result<(), daskrs_worker::Error>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scheduler(#[from] daskrs_scheduler::Error),
    #[error(transparent)]
    Worker(#[from] daskrs_worker::Error),
}

impl LocalCluster {
    pub async fn start(cfg: LocalConfig) -> Result<LocalCluster, Error> {
        let (stop, stop_rx) = watch::channel(false);
        let (stop_scheduler, scheduler_rx) = watch::channel(false);
        let scheduler = Scheduler::start(
            SchedulerConfig {
                listen: cfg.listen,
                http_listen: cfg.http_listen,
                s3: cfg.s3.clone(),
                token: cfg.token.clone(),
                tls: cfg.tls.clone(),
                ..SchedulerConfig::default()
            },
            scheduler_rx,
        )
        .await?;
        let addr = scheduler.grpc_addr;
        let target = if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        };
        let s3 = daskrs_engine::S3Access::load(&cfg.s3).await;
        let executor = Arc::new(daskrs_engine::Executor::new(Some(s3)));
        let mut workers = Vec::new();
        for i in 0..cfg.workers {
            let wc = WorkerConfig {
                scheduler: target.clone(),
                name: format!("local-{i}"),
                nthreads: cfg.threads_per_worker,
                memory_limit: cfg.memory_limit,
                local_dir: cfg.local_dir.clone(),
                listen: ([127, 0, 0, 1], 0).into(),
                http_listen: None,
                contact_address: None,
                shutdown_timeout: Duration::from_secs(10),
                pause_on_process_memory: false,
                port_file: None,
                token: cfg.token.clone(),
                tls: cfg.tls.clone(),
                open_metrics: false,
            };
            workers.push(tokio::spawn(daskrs_worker::run(
                wc,
                Registry::builtin().with_sql(executor.clone()),
                stop_rx.clone(),
            )));
        }
        Ok(LocalCluster {
            scheduler_addr: addr,
            token: cfg.token,
            tls: cfg.tls,
            http_addr: scheduler.http_addr,
            stop,
            stop_scheduler,
            scheduler,
            workers,
        })
    }

    /// The address a client on this machine connects to.
    pub fn address(&self) -> String {
        if self.scheduler_addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", self.scheduler_addr.port())
        } else {
            self.scheduler_addr.to_string()
        }
    }

    /// Stops the workers (they hand off and close), then the scheduler.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            match tokio::time::timeout(Duration::from_secs(15), w).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "worker stopped with an error"),
                Err(_) => tracing::warn!("worker did not stop in time"),
                _ => {}
            }
        }
        let _ = self.stop_scheduler.send(true);
        if tokio::time::timeout(Duration::from_secs(5), self.scheduler.wait())
            .await
            .is_err()
        {
            tracing::warn!("scheduler did not stop in time");
        }
    }
}
