//! Status: what the pass found and did, assembled purely and written by
//! server-side apply with the operator's field manager, only when it
//! changed. Nothing in it changes on every pass (condition times move only
//! when the condition does), so writing it does not wake the controller
//! again and again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use super::apply::Applied;
use super::read::{ObservedPod, PodState};
use super::validate::Invalid;
use super::{Context, Error, key};
use crate::builders::{self, MANAGER};
use crate::crd::{DaskCluster, DaskClusterStatus, Phase};

pub const SPEC_VALID: &str = "SpecValid";
pub const SCHEDULER_READY: &str = "SchedulerReady";
pub const WORKERS_READY: &str = "WorkersReady";

/// The status after a pass that acted on a valid spec.
pub fn assemble(cluster: &DaskCluster, applied: &Applied) -> DaskClusterStatus {
    let Applied {
        scheduler,
        workers,
        target,
        ..
    } = applied;
    let target = *target;
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
    let workers_ready = ready == target && stale == 0;
    DaskClusterStatus {
        phase: Some(phase),
        conditions: vec![
            condition(
                cluster,
                SPEC_VALID,
                true,
                "Valid",
                "the spec is valid".into(),
            ),
            condition(
                cluster,
                SCHEDULER_READY,
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
                WORKERS_READY,
                workers_ready,
                if workers_ready {
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
    }
}

/// The status of a cluster whose spec the operator will not act on: Failed,
/// with a SpecValid condition saying what to fix. The other conditions
/// stay as they were, with the generation they were observed at; the pod
/// counts are what the pass listed, since nothing was changed.
pub fn invalid(
    cluster: &DaskCluster,
    observed: &[ObservedPod],
    invalid: &Invalid,
) -> DaskClusterStatus {
    let mut status = cluster.status.clone().unwrap_or_default();
    let live = || {
        observed.iter().filter_map(|p| match p.state {
            PodState::Live { ready } => Some(ready),
            _ => None,
        })
    };
    status.phase = Some(Phase::Failed);
    status.replicas = live().count() as i32;
    status.ready_replicas = live().filter(|ready| *ready).count() as i32;
    status.selector = builders::worker_selector(cluster);
    status.observed_generation = cluster.metadata.generation;
    status.conditions.retain(|c| c.type_ != SPEC_VALID);
    status.conditions.insert(
        0,
        condition(
            cluster,
            SPEC_VALID,
            false,
            "InvalidSpec",
            invalid.to_string(),
        ),
    );
    status
}

/// Whether `status` says something about the spec's validity that the
/// cluster's status does not say yet, for this generation: an Event is
/// worth publishing then, not on every pass that finds the same mistake.
pub fn spec_validity_is_news(cluster: &DaskCluster, status: &DaskClusterStatus) -> bool {
    let find = |s: &DaskClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == SPEC_VALID)
            .map(|c| (c.status.clone(), c.message.clone(), c.observed_generation))
    };
    cluster.status.as_ref().and_then(find) != find(status)
}

pub async fn write(
    ctx: &Context,
    cluster: &DaskCluster,
    ns: &str,
    status: &DaskClusterStatus,
) -> Result<(), Error> {
    if cluster.status.as_ref() == Some(status) {
        return Ok(());
    }
    let clusters: Api<DaskCluster> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": DaskCluster::api_version(&()),
        "kind": DaskCluster::kind(&()),
        "status": status,
    });
    clusters
        .patch_status(
            &cluster.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Kube {
            action: "writing the status of",
            object: key(cluster),
            source,
        })?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fixtures::fixture;
    use crate::reconcile::read::SchedulerState;
    use crate::reconcile::scale::{WorkerPod, Workers};
    use crate::reconcile::validate::validate;

    fn available() -> SchedulerState {
        SchedulerState {
            ready: true,
            failed: None,
            message: "the scheduler is available".into(),
        }
    }

    fn applied(scheduler: SchedulerState, live: &[(bool, bool)], target: usize) -> Applied {
        Applied {
            scheduler,
            workers: Workers {
                live: live
                    .iter()
                    .enumerate()
                    .map(|(i, &(ready, fresh))| WorkerPod {
                        name: format!("demo-worker-{i}"),
                        ready,
                        fresh,
                    })
                    .collect(),
                ..Workers::default()
            },
            target,
            created: 0,
            removed: 0,
        }
    }

    fn cond<'a>(s: &'a DaskClusterStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"))
    }

    #[test]
    fn a_settled_cluster_rewrites_nothing_so_the_status_patch_is_skipped() {
        let c = fixture("running");
        let s = assemble(&c, &applied(available(), &[(true, true); 3], 3));
        assert_eq!(Some(&s), c.status.as_ref(), "the same status, times kept");
    }

    #[test]
    fn a_rollout_is_scaling_and_says_how_many_pods_are_stale() {
        let c = fixture("running");
        let s = assemble(
            &c,
            &applied(
                available(),
                &[(true, true), (true, false), (true, false)],
                3,
            ),
        );
        assert_eq!(s.phase, Some(Phase::Scaling));
        let w = cond(&s, WORKERS_READY);
        assert_eq!(
            (w.status.as_str(), w.reason.as_str()),
            ("False", "RollingOut")
        );
        assert_eq!(w.message, "3 of 3 workers ready, 2 from an older template");
        assert_ne!(
            w.last_transition_time,
            cond(c.status.as_ref().unwrap(), WORKERS_READY).last_transition_time,
            "the condition changed, so did its time"
        );
        assert_eq!(
            cond(&s, SCHEDULER_READY).last_transition_time,
            cond(c.status.as_ref().unwrap(), SCHEDULER_READY).last_transition_time
        );
    }

    #[test]
    fn a_failed_scheduler_deployment_fails_the_cluster_with_its_message() {
        let c = fixture("minimal");
        let failed = SchedulerState {
            ready: false,
            failed: Some("ProgressDeadlineExceeded".into()),
            message: "the scheduler Deployment failed: ProgressDeadlineExceeded".into(),
        };
        let s = assemble(&c, &applied(failed, &[], 2));
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(cond(&s, SCHEDULER_READY).reason, "DeploymentFailed");
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(
            s.scheduler_address.as_deref(),
            Some("demo-scheduler.data.svc:8786")
        );
    }

    #[test]
    fn an_invalid_spec_fails_the_cluster_with_a_condition_naming_the_field() {
        let mut c = fixture("running");
        c.spec.worker.memory_limit = fixture("memory-limit-4Gb").spec.worker.memory_limit;
        c.metadata.generation = Some(6);
        let err = validate(&c).expect_err("invalid");
        let observed = vec![ObservedPod {
            name: "demo-worker-a".into(),
            template_hash: None,
            state: PodState::Live { ready: true },
        }];
        let s = invalid(&c, &observed, &err);
        assert_eq!(s.phase, Some(Phase::Failed));
        let v = cond(&s, SPEC_VALID);
        assert_eq!(
            (v.status.as_str(), v.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            v.message.starts_with("spec.worker.memoryLimit: \"4Gb\""),
            "{}",
            v.message
        );
        assert_eq!(v.observed_generation, Some(6));
        assert_eq!((s.replicas, s.ready_replicas), (1, 1));
        assert_eq!(s.observed_generation, Some(6));
        assert_eq!(
            cond(&s, WORKERS_READY).observed_generation,
            Some(5),
            "what was observed before stays as it was"
        );
        assert!(spec_validity_is_news(&c, &s));

        let mut again = c.clone();
        again.status = Some(s.clone());
        assert!(
            !spec_validity_is_news(&again, &invalid(&again, &observed, &err)),
            "the same mistake in the same generation is reported once"
        );
    }
}
