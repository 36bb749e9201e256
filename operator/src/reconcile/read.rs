//! Read: what exists now. The worker pods are listed fresh from the API
//! server (not a cache), so a pass never counts pods it made a moment ago
//! twice; each is kept only as the few facts the later stages use, since
//! with thousands of workers whole pods would be most of the memory.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::{Context, Error, key};
use crate::builders;
use crate::crd::DaskCluster;
use crate::scheduler_api::Adaptive;

/// A worker pod as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedPod {
    pub name: String,
    /// The hash of the template the pod was made from.
    pub template_hash: Option<String>,
    pub state: PodState,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PodState {
    /// Not being deleted and not ended.
    Live {
        ready: bool,
    },
    /// Its containers have exited for good: `failure` says why when it
    /// failed, None when it succeeded (a retired worker).
    Ended {
        failure: Option<String>,
    },
    Terminating,
}

pub async fn worker_pods(
    ctx: &Context,
    cluster: &DaskCluster,
    ns: &str,
) -> Result<Vec<ObservedPod>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&builders::worker_selector(cluster)))
        .await
        .map_err(|source| Error::Kube {
            action: "listing the worker pods of",
            object: key(cluster),
            source,
        })?;
    Ok(listed.items.iter().map(observe).collect())
}

pub fn observe(pod: &Pod) -> ObservedPod {
    let status = pod.status.as_ref();
    let state = if pod.metadata.deletion_timestamp.is_some() {
        PodState::Terminating
    } else {
        match status.and_then(|s| s.phase.as_deref()) {
            Some("Failed") => PodState::Ended {
                failure: Some(
                    status
                        .and_then(|s| s.reason.clone().or(s.message.clone()))
                        .unwrap_or_else(|| "it failed".into()),
                ),
            },
            Some("Succeeded") => PodState::Ended { failure: None },
            _ => PodState::Live {
                ready: pod_ready(pod),
            },
        }
    };
    ObservedPod {
        name: pod.name_any(),
        template_hash: builders::pod_template_hash(pod).map(String::from),
        state,
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The scheduler as its Deployment reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerState {
    pub ready: bool,
    /// Why the Deployment failed, if it did.
    pub failed: Option<String>,
    pub message: String,
}

pub fn scheduler_state(d: &Deployment) -> SchedulerState {
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

/// How many workers the scheduler wants; None when it does not answer,
/// which the scaling decision treats as "keep what there is".
pub async fn adaptive(ctx: &Context, cluster: &DaskCluster, token: &str) -> Option<Adaptive> {
    match ctx
        .scheduler
        .adaptive(&ctx.scheduler_at(cluster, token))
        .await
    {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::info!(cluster = %key(cluster), error = %e, "no adaptive answer");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("a pod")
    }

    #[test]
    fn a_pod_is_ready_only_when_its_ready_condition_is_true() {
        let ready = pod(
            "metadata: {name: w1, labels: {daskrs.dev/template-hash: abc}}\nstatus: {phase: Running, conditions: [{type: Ready, status: 'True'}]}",
        );
        assert_eq!(
            observe(&ready),
            ObservedPod {
                name: "w1".into(),
                template_hash: Some("abc".into()),
                state: PodState::Live { ready: true },
            }
        );
        let starting = pod(
            "metadata: {name: w2}\nstatus: {phase: Running, conditions: [{type: ContainersReady, status: 'True'}]}",
        );
        assert_eq!(observe(&starting).state, PodState::Live { ready: false });
        assert_eq!(
            observe(&pod("metadata: {name: w3}")).state,
            PodState::Live { ready: false }
        );
    }

    #[test]
    fn ended_pods_say_why_they_failed_and_deleted_ones_count_as_terminating() {
        let evicted = pod(
            "metadata: {name: w1}\nstatus: {phase: Failed, reason: Evicted, message: low on memory}",
        );
        assert_eq!(
            observe(&evicted).state,
            PodState::Ended {
                failure: Some("Evicted".into())
            }
        );
        let retired = pod("metadata: {name: w2}\nstatus: {phase: Succeeded}");
        assert_eq!(observe(&retired).state, PodState::Ended { failure: None });
        let going = pod(
            "metadata: {name: w3, deletionTimestamp: '2025-01-02T03:04:05Z'}\nstatus: {phase: Failed}",
        );
        assert_eq!(observe(&going).state, PodState::Terminating);
    }

    #[test]
    fn a_scheduler_deployment_that_stopped_progressing_is_failed_with_its_message() {
        let d: Deployment = serde_yaml::from_str(
            "status: {conditions: [{type: Progressing, status: 'False', message: 'ProgressDeadlineExceeded'}]}",
        )
        .expect("a Deployment");
        let s = scheduler_state(&d);
        assert!(!s.ready);
        assert_eq!(s.failed.as_deref(), Some("ProgressDeadlineExceeded"));
        let d: Deployment =
            serde_yaml::from_str("status: {availableReplicas: 1}").expect("a Deployment");
        assert!(scheduler_state(&d).ready);
    }
}
