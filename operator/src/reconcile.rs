//! The DaskCluster reconciler: level-based and idempotent. Each pass reads
//! what exists, compares it with the spec, acts, and writes the status.
//!
//! - The scheduler Deployment and Service are server-side applied with one
//!   field manager, so spec edits always land and repeated passes are no-ops.
//! - Worker pods are listed fresh from the API server (not a cache), so a
//!   pass never counts pods it made a moment ago twice.
//! - Scale-down removes pods that are not ready first, then asks the
//!   scheduler to retire workers (they hand off their results) before their
//!   pods are deleted. A busy worker is never deleted unretired; if the
//!   scheduler cannot be reached, deletion's SIGTERM makes the worker hand
//!   off by itself within the pod's grace period.
//! - Pods carry the hash of the template they were made from. Stale pods are
//!   replaced: new pods first, then the stale ones retired once enough new
//!   ones are ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};

use crate::builders::{self, Defaults, MANAGER};
use crate::crd::{DaskCluster, DaskClusterStatus, Phase};
use crate::metrics::Metrics;
use crate::scheduler_api::SchedulerApi;

/// Pods created or deleted at once.
const API_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("DaskCluster {0} has no namespace")]
    NoNamespace(String),
    #[error("spec.idleTimeout {0:?} is not a duration such as 30m or 1h30m")]
    IdleTimeout(String),
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

    fn scheduler_base(&self, cluster: &DaskCluster) -> String {
        self.settings
            .scheduler_url
            .replace("{service}", &builders::scheduler_name(cluster))
            .replace("{name}", &cluster.name_any())
            .replace("{namespace}", &cluster.namespace().unwrap_or_default())
    }
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
        ctx.failures.lock().unwrap().remove(&key(&cluster));
    }
    result
}

/// Exponential backoff per cluster: 1 s doubling to 5 minutes.
pub fn error_policy(cluster: Arc<DaskCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        let mut f = ctx.failures.lock().unwrap();
        let n = f.entry(key(&cluster)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_secs(1u64 << (n - 1).min(9)).min(Duration::from_secs(300));
    tracing::warn!(cluster = %key(&cluster), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// What the worker pods look like now.
#[derive(Default)]
struct Workers {
    /// Not being deleted and not ended: (pod, ready, fresh).
    live: Vec<(Pod, bool, bool)>,
    ended: Vec<Pod>,
    terminating: usize,
}

impl Workers {
    fn classify(pods: Vec<Pod>, hash: &str) -> Workers {
        let mut w = Workers::default();
        for pod in pods.into_iter().map(slim) {
            if pod.metadata.deletion_timestamp.is_some() {
                w.terminating += 1;
                continue;
            }
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending");
            if phase == "Failed" || phase == "Succeeded" {
                w.ended.push(pod);
                continue;
            }
            let ready = pod_ready(&pod);
            let fresh = builders::pod_template_hash(&pod) == Some(hash);
            w.live.push((pod, ready, fresh));
        }
        w
    }

    fn count(&self, ready: Option<bool>, fresh: Option<bool>) -> usize {
        self.live
            .iter()
            .filter(|(_, r, f)| ready.is_none_or(|x| x == *r) && fresh.is_none_or(|x| x == *f))
            .count()
    }
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn reconcile_cluster(cluster: &DaskCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = cluster
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cluster.name_any()))?;
    let idle_timeout = match &cluster.spec.idle_timeout {
        Some(s) => Some(parse_duration(s).ok_or_else(|| Error::IdleTimeout(s.clone()))?),
        None => None,
    };
    let client = ctx.client.clone();
    let apply = PatchParams::apply(MANAGER).force();

    // The scheduler.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let name = builders::scheduler_name(cluster);
    services
        .patch(
            &name,
            &apply,
            &Patch::Apply(builders::scheduler_service(cluster)),
        )
        .await?;
    let deployment = deployments
        .patch(
            &name,
            &apply,
            &Patch::Apply(builders::scheduler_deployment(
                cluster,
                &ctx.settings.defaults,
            )),
        )
        .await?;
    let scheduler = scheduler_state(&deployment);

    // The workers.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let template = builders::worker_pod(cluster, &ctx.settings.defaults);
    let hash = builders::pod_template_hash(&template)
        .unwrap_or_default()
        .to_string();
    let listed = pods
        .list(&ListParams::default().labels(&builders::worker_selector(cluster)))
        .await?;
    let mut workers = Workers::classify(listed.items, &hash);

    // Ended pods go: a retired worker's pod has finished its job, a failed
    // one is replaced below like any missing worker.
    for pod in std::mem::take(&mut workers.ended) {
        let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        delete_pod(&pods, &pod.name_any()).await?;
        if failed {
            let reason = pod
                .status
                .as_ref()
                .and_then(|s| s.reason.clone().or(s.message.clone()))
                .unwrap_or_else(|| "it failed".into());
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "WorkerFailed",
                "Replace",
                format!(
                    "worker pod {} failed ({reason}); replacing it",
                    pod.name_any()
                ),
            )
            .await;
        }
    }

    let target = target_workers(cluster, ctx, &workers, scheduler.ready, idle_timeout).await;

    // Create: as many current-template pods as the target asks for.
    let fresh = workers.count(None, Some(true));
    let mut created = 0;
    if fresh < target {
        let n = target - fresh;
        let made = create_pods(&pods, &template, n).await?;
        created = made.len();
        ctx.metrics.pods_created(created);
        let stale = workers.count(None, Some(false));
        let message = if stale > 0 {
            format!("created {created} worker pods to replace {stale} made from an older template")
        } else {
            format!("created {created} worker pods (target {target})")
        };
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "ScalingUp",
            "Create",
            message,
        )
        .await;
        for p in made {
            workers.live.push((p, false, true));
        }
    }

    // Remove: what is beyond the target, in the order that loses least.
    let removed = scale_down(cluster, ctx, &pods, &workers, target).await?;
    workers
        .live
        .retain(|(p, _, _)| !removed.contains(&p.name_any()));

    // Status.
    let replicas = workers.live.len();
    let ready = workers.count(Some(true), None);
    let stale = workers.count(None, Some(false));
    let phase = if scheduler.failed.is_some() {
        Phase::Failed
    } else if !scheduler.ready {
        Phase::Pending
    } else if replicas != target || ready != target || stale > 0 || workers.terminating > 0 {
        Phase::Scaling
    } else {
        Phase::Running
    };
    let status = DaskClusterStatus {
        phase: Some(phase),
        conditions: vec![
            condition(
                cluster,
                "SchedulerReady",
                scheduler.ready,
                if scheduler.ready {
                    "Available"
                } else if scheduler.failed.is_some() {
                    "DeploymentFailed"
                } else {
                    "Unavailable"
                },
                scheduler.message.clone(),
            ),
            condition(
                cluster,
                "WorkersReady",
                ready == target && stale == 0,
                if ready == target && stale == 0 {
                    "AllReady"
                } else if stale > 0 {
                    "RollingOut"
                } else {
                    "NotReady"
                },
                format!(
                    "{ready} of {target} workers ready{}",
                    if stale > 0 {
                        format!(", {stale} from an older template")
                    } else {
                        String::new()
                    }
                ),
            ),
        ],
        replicas: replicas as i32,
        ready_replicas: ready as i32,
        target_replicas: target as i32,
        selector: builders::worker_selector(cluster),
        scheduler_address: Some(builders::scheduler_address(cluster)),
        observed_generation: cluster.metadata.generation,
    };
    if cluster.status.as_ref() != Some(&status) {
        let clusters: Api<DaskCluster> = Api::namespaced(client, &ns);
        let patch = serde_json::json!({ "status": status });
        clusters
            .patch_status(
                &cluster.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }

    let settled = phase == Phase::Running && created == 0 && removed.is_empty();
    let watching_scheduler = cluster.spec.autoscaling.is_some() || idle_timeout.is_some();
    Ok(if !settled || watching_scheduler {
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

struct SchedulerState {
    ready: bool,
    failed: Option<String>,
    message: String,
}

fn scheduler_state(d: &Deployment) -> SchedulerState {
    let status = d.status.clone().unwrap_or_default();
    let ready = status.available_replicas.unwrap_or(0) >= 1;
    let failed = status.conditions.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| {
                (c.type_ == "Progressing" && c.status == "False")
                    || (c.type_ == "ReplicaFailure" && c.status == "True")
            })
            .map(|c| c.message.clone().unwrap_or_else(|| c.type_.clone()))
    });
    let message = if ready {
        "the scheduler is available".to_string()
    } else if let Some(f) = &failed {
        format!("the scheduler Deployment failed: {f}")
    } else {
        "waiting for the scheduler pod to become ready".to_string()
    };
    SchedulerState {
        ready,
        failed,
        message,
    }
}

/// How many workers the cluster should have now.
async fn target_workers(
    cluster: &DaskCluster,
    ctx: &Context,
    workers: &Workers,
    scheduler_ready: bool,
    idle_timeout: Option<Duration>,
) -> usize {
    let spec = &cluster.spec;
    let current = workers.live.len();
    let base = spec.worker.replicas.max(0) as usize;
    if spec.autoscaling.is_none() && idle_timeout.is_none() {
        return base;
    }
    let adaptive = if scheduler_ready {
        match ctx.scheduler.adaptive(&ctx.scheduler_base(cluster)).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::info!(cluster = %key(cluster), error = %e, "no adaptive answer");
                None
            }
        }
    } else {
        None
    };
    let Some(a) = adaptive else {
        // Without an answer, keep what there is (within bounds).
        return match &spec.autoscaling {
            Some(auto) => clamp(
                if current == 0 && cluster.status.is_none() {
                    base
                } else {
                    current
                },
                auto.min_replicas,
                auto.max_replicas,
            ),
            None => base,
        };
    };
    let busy = a.tasks_waiting + a.tasks_processing > 0;
    let mut want = match &spec.autoscaling {
        Some(auto) => clamp(
            a.desired_workers as usize,
            auto.min_replicas,
            auto.max_replicas,
        ),
        None => base,
    };
    if let Some(limit) = idle_timeout
        && !busy
        && a.idle_seconds >= limit.as_secs_f64()
    {
        want = 0;
    }
    // Scale up at once; scale down only after the wish has held a while.
    let mut low = ctx.low_since.lock().unwrap();
    if want >= current {
        low.remove(&key(cluster));
        want
    } else {
        let since = *low.entry(key(cluster)).or_insert_with(Instant::now);
        if since.elapsed() >= ctx.settings.scale_down_delay
            || (want == 0 && !busy && idle_timeout.is_some())
        {
            want
        } else {
            current
        }
    }
}

fn clamp(n: usize, min: i32, max: i32) -> usize {
    n.clamp(min.max(0) as usize, max.max(min).max(0) as usize)
}

/// Creates `n` pods from `template`; the pods made, slimmed.
async fn create_pods(pods: &Api<Pod>, template: &Pod, n: usize) -> Result<Vec<Pod>, Error> {
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let made = futures::stream::iter(0..n)
        .map(|_| async { pods.create(&pp, template).await.map(slim) })
        .buffer_unordered(API_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(made)
}

/// The pod without what the reconciler never reads after listing: with
/// thousands of workers the spec and managed fields are most of the memory.
fn slim(mut pod: Pod) -> Pod {
    pod.spec = None;
    pod.metadata.managed_fields = None;
    pod
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the pods beyond the target. Returns the names removed.
async fn scale_down(
    cluster: &DaskCluster,
    ctx: &Context,
    pods: &Api<Pod>,
    workers: &Workers,
    target: usize,
) -> Result<Vec<String>, Error> {
    let names = |ready: bool, fresh: bool| -> Vec<String> {
        let mut v: Vec<String> = workers
            .live
            .iter()
            .filter(|(_, r, f)| *r == ready && *f == fresh)
            .map(|(p, _, _)| p.name_any())
            .collect();
        v.sort();
        v
    };
    let fresh_total = workers.count(None, Some(true));
    let fresh_ready = workers.count(Some(true), Some(true));
    let stale_ready = names(true, false);
    let mut removed = Vec::new();

    // 1. Stale pods that are not ready: nothing to hand off.
    let mut direct = names(false, false);
    // 2. Stale ready pods, once enough fresh pods are ready to take over.
    let stale_out = (fresh_ready + stale_ready.len()).saturating_sub(target);
    let mut retire_named: Vec<String> = stale_ready.into_iter().take(stale_out).collect();
    // 3. Fresh pods beyond the target: those not ready first, then the
    //    ones the scheduler chooses.
    let mut excess = fresh_total.saturating_sub(target);
    for n in names(false, true) {
        if excess == 0 {
            break;
        }
        direct.push(n);
        excess -= 1;
    }
    let retire_count = excess;

    let pod_names: Vec<String> = workers.live.iter().map(|(p, _, _)| p.name_any()).collect();
    let base = ctx.scheduler_base(cluster);
    if retire_count > 0 {
        match ctx.scheduler.retire(&base, &[], retire_count).await {
            Ok(chosen) => {
                let ours: Vec<String> = chosen
                    .into_iter()
                    .filter(|n| pod_names.contains(n))
                    .collect();
                // Workers the scheduler does not know yet (starting) make up
                // the rest.
                let mut more = retire_count.saturating_sub(ours.len());
                for n in names(true, true).into_iter().rev() {
                    if more == 0 {
                        break;
                    }
                    if !ours.contains(&n) {
                        direct.push(n);
                        more -= 1;
                    }
                }
                retired_event(ctx, cluster, &ours).await;
                direct.extend(ours);
            }
            Err(e) => {
                scheduler_unreachable(ctx, cluster, &e.to_string()).await;
                // SIGTERM makes each worker hand off its results itself.
                direct.extend(names(true, true).into_iter().rev().take(retire_count));
            }
        }
    }
    if !retire_named.is_empty() {
        match ctx.scheduler.retire(&base, &retire_named, 0).await {
            Ok(done) => retired_event(ctx, cluster, &done).await,
            Err(e) => scheduler_unreachable(ctx, cluster, &e.to_string()).await,
        }
        direct.append(&mut retire_named);
    }
    if direct.is_empty() {
        return Ok(removed);
    }
    futures::stream::iter(direct.clone())
        .map(|n| async move { delete_pod(pods, &n).await })
        .buffer_unordered(API_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    ctx.metrics.pods_deleted(direct.len());
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "ScalingDown",
        "Delete",
        format!("deleted {} worker pods (target {target})", direct.len()),
    )
    .await;
    removed.extend(direct);
    Ok(removed)
}

async fn retired_event(ctx: &Context, cluster: &DaskCluster, names: &[String]) {
    if names.is_empty() {
        return;
    }
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "WorkersRetired",
        "Retire",
        format!("the scheduler retired {}", names.join(", ")),
    )
    .await;
}

async fn scheduler_unreachable(ctx: &Context, cluster: &DaskCluster, error: &str) {
    publish(
        ctx,
        cluster,
        EventType::Warning,
        "RetireFailed",
        "Retire",
        format!("{error}; deleting the pods, each worker hands off its results on SIGTERM"),
    )
    .await;
}

async fn publish(
    ctx: &Context,
    cluster: &DaskCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    // A recorder of its own for each Event: a shared one folds every Event
    // with the same reason into the first one's series and keeps that one's
    // note, so "scaled to 3" would still read "scaled to 2".
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(cluster = %key(cluster), error = %e, "cannot publish event");
    }
}

/// A status condition; the transition time moves only when the status does.
fn condition(
    cluster: &DaskCluster,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last = cluster
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: cluster.metadata.generation,
        last_transition_time: last.unwrap_or_else(|| Time(now_seconds())),
    }
}

/// Now, to the second: the API server keeps condition times in seconds, so
/// a finer time would make every status look changed.
fn now_seconds() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `90s`, `30m`, `1h30m`, `1.5h`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(split);
        let num: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        total += num
            * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10d"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn clamps_to_bounds() {
        assert_eq!(clamp(0, 1, 5), 1);
        assert_eq!(clamp(9, 1, 5), 5);
        assert_eq!(clamp(3, 1, 5), 3);
    }
}
