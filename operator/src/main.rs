//! `daskrs-operator`: reconciles DaskCluster resources.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use tokio::sync::watch;

use daskrs_operator::builders::{Defaults, MANAGER};
use daskrs_operator::lease::LeaderLease;
use daskrs_operator::metrics::{self, Metrics};
use daskrs_operator::reconcile::{Context, Settings};
use daskrs_operator::scheduler_api::HttpScheduler;

#[derive(Parser, Debug)]
#[command(
    name = "daskrs-operator",
    version,
    about = "Reconciles DaskCluster resources into daskrs schedulers and workers"
)]
struct Args {
    /// Watch only these namespaces (comma-separated, or the flag repeated);
    /// all namespaces when unset.
    #[arg(long, env = "DASKRS_WATCH_NAMESPACE", value_delimiter = ',', value_parser = namespace_name)]
    namespace: Vec<String>,
    /// The runtime image of clusters whose spec names none: the scheduler's,
    /// and the workers' unless `--worker-image` is set.
    #[arg(long, env = "DASKRS_DEFAULT_IMAGE", default_value = concat!("ghcr.io/daskrs/daskrs:", env!("CARGO_PKG_VERSION")))]
    default_image: String,
    /// The workers' image of clusters whose spec names none, such as the
    /// image that also runs Python tasks (`ghcr.io/daskrs/daskrs-python`);
    /// `--default-image` when unset.
    #[arg(long, env = "DASKRS_WORKER_IMAGE")]
    worker_image: Option<String>,
    /// The scheduler's HTTP API; `{service}`, `{name}` and `{namespace}` are
    /// filled in per cluster. Out of the cluster, the API server's service
    /// proxy works too.
    #[arg(
        long,
        env = "DASKRS_SCHEDULER_URL",
        default_value = "http://{service}.{namespace}.svc:8787"
    )]
    scheduler_url: String,
    /// How long a scale-down waits for retiring workers to hand off their results.
    #[arg(long, env = "DASKRS_RETIRE_TIMEOUT", default_value_t = 60)]
    retire_timeout_seconds: u64,
    /// Adaptive scale-down waits until the scheduler has wanted fewer
    /// workers for this long.
    #[arg(long, env = "DASKRS_SCALE_DOWN_DELAY", default_value_t = 60)]
    scale_down_delay_seconds: u64,
    /// `/metrics`, `/health` and `/ready`.
    #[arg(long, env = "DASKRS_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Run only while holding the leader Lease (for several replicas).
    #[arg(long, env = "DASKRS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "DASKRS_LEASE_NAME", default_value = "daskrs-operator")]
    lease_name: String,
    /// Namespace of the Lease; defaults to the operator pod's own.
    #[arg(long, env = "DASKRS_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, env = "DASKRS_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's name in the Lease and in Events; the pod name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "DASKRS_LOG", default_value = "info")]
    log: String,
    /// Give each cluster a NetworkPolicy that admits only its own pods, the
    /// operator and pods labelled `daskrs.dev/client=true` to its ports.
    #[arg(long, env = "DASKRS_NETWORK_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
    network_policies: bool,
    /// The operator's namespace, which those NetworkPolicies admit it
    /// from; from any namespace when unset.
    #[arg(long, env = "DASKRS_OPERATOR_NAMESPACE", value_parser = namespace_name)]
    operator_namespace: Option<String>,
}

/// A namespace name is a DNS label: at most 63 lowercase letters, digits
/// and '-', starting and ending with a letter or digit.
fn namespace_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daskrs-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let metrics = Metrics::new();
    let bound = metrics::serve(args.metrics_addr, metrics.clone())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.metrics_addr))?;
    tracing::info!(addr = %bound, "serving /metrics, /health and /ready");

    let client = Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes API: {e}"))?;
    client
        .apiserver_version()
        .await
        .map_err(|e| format!("the Kubernetes API server does not answer: {e}"))?;
    metrics.set_ready();
    let identity = args.identity.clone().unwrap_or_else(default_identity);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let lease = if args.leader_election {
        let ns = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let lease = LeaderLease::new(
            Api::<Lease>::namespaced(client.clone(), &ns),
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds.max(3)),
        );
        tracing::info!(identity, lease = %format!("{ns}/{}", args.lease_name), "waiting for leadership");
        let mut stop = stop_rx.clone();
        loop {
            match lease.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
        tracing::info!(identity, "leading");
        metrics.set_leader(true);
        Some(Arc::new(lease))
    } else {
        None
    };

    // Stop when told to, or when the lease is lost.
    let (lost_tx, mut lost_rx) = watch::channel(false);
    if let Some(lease) = lease.clone() {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let every = lease.duration() / 3;
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                match lease.try_acquire().await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the leader lease");
                        if last_renewed.elapsed() >= lease.duration() - every {
                            break;
                        }
                    }
                }
            }
            tracing::error!("lost the leader lease");
            metrics.set_leader(false);
            let _ = lost_tx.send(true);
        });
    }
    let mut stop = stop_rx.clone();
    let shutdown = async move {
        tokio::select! {
            _ = stop.changed() => {}
            _ = lost_rx.changed() => {}
        }
    };

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let settings = Settings {
        defaults: Defaults {
            image: args.default_image.clone(),
            worker_image: args.worker_image.clone(),
            network_policies: args.network_policies,
            operator_namespace: args.operator_namespace.clone(),
        },
        scheduler_url: args.scheduler_url.clone(),
        scale_down_delay: Duration::from_secs(args.scale_down_delay_seconds),
    };
    let ctx = Arc::new(Context::new(
        client,
        settings,
        Arc::new(HttpScheduler::new(Duration::from_secs(
            args.retire_timeout_seconds,
        ))),
        reporter,
        metrics.clone(),
    ));
    let mut namespaces = args.namespace.clone();
    namespaces.sort();
    namespaces.dedup();
    tracing::info!(
        namespace = if namespaces.is_empty() {
            "(all)".to_string()
        } else {
            namespaces.join(",")
        },
        default_image = %args.default_image,
        worker_image = args.worker_image.as_deref().unwrap_or("(the default image)"),
        "reconciling DaskClusters"
    );
    daskrs_operator::controller::run(ctx, namespaces, shutdown).await;

    let lost = !*stop_rx.borrow();
    if let Some(lease) = lease {
        if lost {
            return Err("lost the leader lease; exiting so that another replica leads".into());
        }
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "cannot release the leader lease");
        }
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into());
    format!("{host}-{}", std::process::id())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
