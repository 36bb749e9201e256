//! The DaskCluster reconciler: level-based and idempotent. Each pass is a
//! pipeline of stages, one module each:
//!
//! - [`read`]: the worker pods as they are now;
//! - [`validate`]: the spec checked and resolved; an invalid one is
//!   reported in the status and an Event, and waits for the next edit;
//! - [`build`]: the objects the spec asks for;
//! - [`apply`]: the scheduler applied, pods made and removed, as
//!   [`scale`] decides;
//! - [`status`]: what the pass found, written back.
//!
//! Validate, build, the scaling decision and the status assembly are pure
//! functions, tested from YAML fixtures; only read, apply and the status
//! write touch the API server or the scheduler.

mod apply;
mod build;
mod events;
#[cfg(test)]
mod fuzz;
mod read;
mod scale;
mod status;
mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::{Client, ResourceExt};

use crate::builders::{self, Defaults};
use crate::crd::{DaskCluster, Phase};
use crate::metrics::Metrics;
use crate::scheduler_api::{SchedulerApi, SchedulerAt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("DaskCluster {0} has no namespace")]
    NoNamespace(String),
    #[error("the Secret {object} is unusable: {problem}")]
    BadSecret { object: String, problem: String },
    #[error("cannot make the cluster's TLS certificates: {0}")]
    Certificate(String),
    #[error(
        "cannot ask cert-manager for {object}: the API server does not serve \
         cert-manager.io/v1 Certificates; install cert-manager, or drop spec.tls.issuerRef \
         to have the operator issue the certificates"
    )]
    CertManagerMissing { object: String },
}

/// How the operator is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: Defaults,
    /// The scheduler's HTTP base URL; `{name}`, `{service}` and
    /// `{namespace}` are filled in per cluster.
    pub scheduler_url: String,
    /// Adaptive scale-down waits until the scheduler has wanted fewer
    /// workers for this long, so a pause between two jobs does not churn
    /// pods.
    pub scale_down_delay: Duration,
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub scheduler: Arc<dyn SchedulerApi>,
    /// Who the operator's Events say reported them.
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Per cluster: since when the scheduler has wanted fewer workers.
    low_since: Mutex<HashMap<String, Instant>>,
    /// Per cluster: consecutive failed passes, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        scheduler: Arc<dyn SchedulerApi>,
        reporter: Reporter,
        metrics: Arc<Metrics>,
    ) -> Self {
        Context {
            client,
            settings,
            scheduler,
            reporter,
            metrics,
            low_since: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    fn scheduler_at(&self, cluster: &DaskCluster, token: &str) -> SchedulerAt {
        let base = self
            .settings
            .scheduler_url
            .replace("{service}", &builders::scheduler_name(cluster))
            .replace("{name}", &cluster.name_any())
            .replace("{namespace}", &cluster.namespace().unwrap_or_default());
        SchedulerAt {
            base,
            token: token.to_string(),
        }
    }
}

/// The maps behind these locks are changed by single inserts and removes,
/// so a pass that panicked while holding one left it whole: keep using it
/// rather than stop reconciling every cluster.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn key(cluster: &DaskCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

pub async fn reconcile(cluster: Arc<DaskCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_cluster(&cluster, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_ok());
    if result.is_ok() {
        lock(&ctx.failures).remove(&key(&cluster));
    }
    result
}

/// Exponential backoff per cluster: 1 s doubling to 5 minutes. Only for
/// errors that may pass (the API server or the network); an invalid spec
/// is not an error, it waits for an edit.
pub fn error_policy(cluster: Arc<DaskCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        let mut f = lock(&ctx.failures);
        let n = f.entry(key(&cluster)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_secs(1u64 << (n - 1).min(9)).min(Duration::from_secs(300));
    tracing::warn!(cluster = %key(&cluster), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_cluster(cluster: &DaskCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = cluster
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cluster.name_any()))?;
    let observed = read::worker_pods(ctx, cluster, &ns).await?;
    let valid = match validate::validate(cluster) {
        Ok(valid) => valid,
        Err(invalid) => {
            let status = status::invalid(cluster, &observed, &invalid);
            let news = status::spec_validity_is_news(cluster, &status);
            status::write(ctx, cluster, &ns, &status).await?;
            if news {
                tracing::warn!(cluster = %key(cluster), problem = %invalid, "invalid spec");
                events::publish(
                    ctx,
                    cluster,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    format!("{invalid}; nothing changes until the spec is fixed"),
                )
                .await;
            }
            return Ok(Action::await_change());
        }
    };
    let desired = build::build(cluster, &valid, &ctx.settings.defaults);
    let applied = apply::apply(ctx, cluster, &ns, &valid, &desired, &observed).await?;
    let status = status::assemble(cluster, &applied);
    status::write(ctx, cluster, &ns, &status).await?;

    let settled =
        status.phase == Some(Phase::Running) && applied.created == 0 && applied.removed == 0;
    let watching_scheduler =
        scale::asks_scheduler(cluster.spec.autoscaling.as_ref(), valid.idle_timeout);
    Ok(if !settled || watching_scheduler {
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// DaskClusters for unit tests, from `operator/tests/fixtures/*.yaml`.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::crd::DaskCluster;

    pub fn fixture(name: &str) -> DaskCluster {
        let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}
