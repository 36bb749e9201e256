//! The long-running commands: scheduler, worker, local cluster.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use daskrs_core::ByteSize;
use daskrs_scheduler::{Scheduler, SchedulerConfig};
use daskrs_worker::WorkerConfig;
use daskrs_worker::kinds::Registry;

use daskrs_proto::auth::{TOKEN_ENV, Token};

use super::{
    Failure, LocalArgs, SchedulerArgs, TokenArgs, WorkerArgs, shutdown_signal, system_memory,
};

fn addr(host: &str, port: u16) -> Result<SocketAddr, Failure> {
    let ip: IpAddr = host
        .parse()
        .map_err(|_| Failure::new(2, format!("--host {host:?} is not an IP address")))?;
    Ok(SocketAddr::new(ip, port))
}

fn seconds(name: &str, v: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Failure::new(
                2,
                format!("{name} must be a positive number of seconds, got {v}"),
            )
        })
}

fn announce(path: &std::path::Path, ports: &[(&str, u16)]) -> Result<(), Failure> {
    daskrs_proto::net::write_port_file(path, ports).map_err(|e| {
        Failure::new(
            3,
            format!("cannot write the port file {}: {e}", path.display()),
        )
    })
}

/// The token a server runs with: refuses to run without one beyond
/// loopback, where anyone on the network could use the cluster, unless
/// told that is meant.
fn server_token(
    args: &TokenArgs,
    listen: IpAddr,
    no_token: bool,
) -> Result<Option<Token>, Failure> {
    let token = args.load()?;
    if token.is_none() && !listen.is_loopback() && !no_token {
        return Err(Failure::new(
            2,
            format!(
                "refusing to listen on {listen} without a cluster token: anyone who reaches it \
                 could run code and read data. Give one with --token-file or ${TOKEN_ENV}, \
                 listen on 127.0.0.1, or pass --no-token on a network you trust"
            ),
        ));
    }
    Ok(token)
}

pub async fn scheduler(a: SchedulerArgs) -> Result<(), Failure> {
    let listen = addr(&a.host, a.port)?;
    let config = SchedulerConfig {
        listen,
        http_listen: Some(addr(&a.host, a.http_port)?),
        heartbeat_interval: seconds("--heartbeat", a.heartbeat)?,
        worker_ttl: seconds("--worker-ttl", a.worker_ttl)?,
        max_tasks: a.max_tasks,
        s3: a.s3.settings(),
        token: server_token(&a.token, listen.ip(), a.no_token)?,
        tls: a.token.tls()?,
        open_metrics: a.open_metrics,
    };
    tracing::info!(?config, "configuration");
    let s = Scheduler::start(config, shutdown_signal())
        .await
        .map_err(|e| Failure::new(3, e.to_string()))?;
    eprintln!(
        "scheduler listening on {} (HTTP {:?})",
        s.grpc_addr, s.http_addr
    );
    if let Some(path) = &a.port_file {
        let mut ports = vec![("grpc", s.grpc_addr.port())];
        ports.extend(s.http_addr.map(|h| ("http", h.port())));
        announce(path, &ports)?;
    }
    s.wait().await.map_err(|e| Failure::new(3, e.to_string()))
}

pub async fn worker(a: WorkerArgs) -> Result<(), Failure> {
    let nthreads = a
        .nthreads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    if nthreads == 0 {
        return Err(Failure::new(2, "--nthreads must be at least 1"));
    }
    let memory_limit = a.memory_limit.unwrap_or(ByteSize(system_memory())).0;
    let listen = addr(&a.host, a.port)?;
    let token = server_token(&a.target.token, listen.ip(), a.no_token)?;
    let config = WorkerConfig {
        scheduler: a.target.scheduler,
        name: a.name,
        nthreads,
        memory_limit,
        local_dir: a.local_dir.unwrap_or_else(std::env::temp_dir),
        listen,
        http_listen: Some(addr(&a.host, a.http_port)?),
        contact_address: a.contact_address,
        shutdown_timeout: seconds("--shutdown-timeout", a.shutdown_timeout)?,
        pause_on_process_memory: a.pause_on_process_memory,
        port_file: a.port_file,
        token,
        tls: a.target.token.tls()?,
        open_metrics: a.open_metrics,
    };
    tracing::info!(?config, "configuration");
    let s3 = daskrs_engine::S3Access::load(&a.s3.settings()).await;
    let mut registry =
        Registry::builtin().with_sql(Arc::new(daskrs_engine::Executor::new(Some(s3))));
    if let Some(python) = a.python {
        let kind = daskrs_worker::python::PythonKind::start(python)
            .map_err(|e| Failure::new(2, format!("--python: {e}")))?;
        tracing::info!(versions = %kind.versions(), "Python tasks run by executor processes");
        registry = registry.with_python(kind);
    }
    daskrs_worker::run(config, registry, shutdown_signal())
        .await
        .map_err(|e| match e {
            daskrs_worker::Error::Refused(_) => Failure::new(2, e.to_string()),
            e => Failure::new(3, e.to_string()),
        })
}

pub async fn local(a: LocalArgs) -> Result<(), Failure> {
    if a.workers == 0 || a.threads_per_worker == 0 {
        return Err(Failure::new(
            2,
            "--workers and --threads-per-worker must be at least 1",
        ));
    }
    let memory_limit = a
        .memory_limit
        .map(|b| b.0)
        .unwrap_or(system_memory() / u64::from(a.workers));
    let listen = addr(&a.host, a.port)?;
    // Beyond loopback, never without a token: one is made if none is given.
    let mut made = false;
    let token = match a.token.load()? {
        None if !listen.ip().is_loopback() => {
            made = true;
            Some(Token::generate())
        }
        t => t,
    };
    let cluster = daskrs_client::local::LocalCluster::start(daskrs_client::local::LocalConfig {
        workers: a.workers,
        threads_per_worker: a.threads_per_worker,
        memory_limit,
        listen,
        http_listen: Some(addr(&a.host, a.http_port)?),
        local_dir: a.local_dir.unwrap_or_else(std::env::temp_dir),
        s3: a.s3.settings(),
        token: token.clone(),
        tls: a.token.tls()?,
    })
    .await
    .map_err(|e| Failure::new(3, e.to_string()))?;
    eprintln!(
        "local cluster: scheduler at {} with {} workers x {} threads, {} each; dashboard, metrics and API at http://{}/",
        cluster.address(),
        a.workers,
        a.threads_per_worker,
        ByteSize(memory_limit),
        cluster.http_addr.map(|a| a.to_string()).unwrap_or_default(),
    );
    if let (true, Some(token)) = (made, &token) {
        let t = token.expose();
        eprintln!(
            "it listens beyond this machine, so it needs this token (made for this run):\n\
             \n    export {TOKEN_ENV}={t}\n\
             \nthen `daskrs sql ...`, or in Python daskrs.Client(\"HOST:{port}\", token=\"{t}\");\n\
             the dashboard asks for it once: http://HOST:{http}/?token={t}",
            port = cluster.scheduler_addr.port(),
            http = cluster.http_addr.map(|a| a.port()).unwrap_or_default(),
        );
    }
    if let Some(path) = &a.port_file {
        let mut ports = vec![("grpc", cluster.scheduler_addr.port())];
        ports.extend(cluster.http_addr.map(|h| ("http", h.port())));
        announce(path, &ports)?;
    }
    eprintln!("press Ctrl-C to stop");
    let mut stop = shutdown_signal();
    let _ = stop.wait_for(|s| *s).await;
    cluster.shutdown().await;
    Ok(())
}
