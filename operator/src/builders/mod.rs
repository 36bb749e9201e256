//! The objects a DaskCluster is made of: the scheduler Deployment and
//! Service and the worker pod template. Pure functions of the resource, the
//! operator's defaults and what validation resolved, so they are tested
//! without an API server.

mod network;
mod pod;
mod scheduler;
mod tls;
mod token;
mod worker;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::DaskCluster;

pub use network::{LABEL_CLIENT, network_policy, network_policy_name};
pub use scheduler::{scheduler_deployment, scheduler_service};
pub use tls::{
    CERTIFICATE_NAME, NOT_AFTER, TLS_DIR, authority_of, ca_secret, ca_secret_name,
    cert_manager_certificates, certificate_resource, certificate_secret, client_secret_name,
    issued_by_cert_manager, needs_issue, new_authority, not_after_of, scheduler_names,
    tls_secret_name,
};
pub use token::{TOKEN_KEY, new_token, owned_by, token_of, token_secret, token_secret_name};
pub use worker::{WorkerSizing, pod_template_hash, worker_pod};

pub const LABEL_CLUSTER: &str = "daskrs.dev/cluster";
pub const LABEL_ROLE: &str = "daskrs.dev/role";
pub const LABEL_TEMPLATE_HASH: &str = "daskrs.dev/template-hash";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "daskrs-operator";
pub const ROLE_SCHEDULER: &str = "scheduler";
pub const ROLE_WORKER: &str = "worker";

pub const SCHEDULER_PORT: i32 = 8786;
pub const SCHEDULER_HTTP_PORT: i32 = 8787;
pub const WORKER_PORT: i32 = 8788;
pub const WORKER_HTTP_PORT: i32 = 8789;

/// What the operator fills in where the spec is silent.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// The image of schedulers, and of workers when `worker_image` is unset
    /// (`--default-image`).
    pub image: String,
    /// The image of workers (`--worker-image`): one that also runs Python
    /// tasks, which the scheduler never does.
    pub worker_image: Option<String>,
    /// Whether each cluster gets a NetworkPolicy (see `network_policy`).
    pub network_policies: bool,
    /// The operator's own namespace, which the NetworkPolicy admits it from.
    pub operator_namespace: Option<String>,
}

impl Defaults {
    /// The scheduler's image: the spec's, else the default image.
    pub fn scheduler_image_for(&self, cluster: &DaskCluster) -> String {
        cluster
            .spec
            .image
            .clone()
            .unwrap_or_else(|| self.image.clone())
    }

    /// A worker's image: the spec's, else the workers' default image, else
    /// the default image.
    pub fn worker_image_for(&self, cluster: &DaskCluster) -> String {
        cluster
            .spec
            .image
            .clone()
            .or_else(|| self.worker_image.clone())
            .unwrap_or_else(|| self.image.clone())
    }
}

pub fn scheduler_name(cluster: &DaskCluster) -> String {
    format!("{}-scheduler", cluster.name_any())
}

/// The scheduler's gRPC address as the workers in the cluster's namespace
/// reach it: the Service's short name, so no cluster domain is assumed.
pub fn scheduler_target(cluster: &DaskCluster) -> String {
    format!("{}:{SCHEDULER_PORT}", scheduler_name(cluster))
}

/// The scheduler's address from any namespace of the cluster
/// (`<service>.<namespace>.svc`, resolved through the pods' search path).
pub fn scheduler_address(cluster: &DaskCluster) -> String {
    format!(
        "{}.{}.svc:{SCHEDULER_PORT}",
        scheduler_name(cluster),
        cluster.namespace().unwrap_or_default()
    )
}

fn selector_labels(cluster: &DaskCluster, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_string(), cluster.name_any()),
        (LABEL_ROLE.to_string(), role.to_string()),
    ])
}

/// The label selector of the worker pods, as the scale subresource and
/// `kubectl get pods -l` take it.
pub fn worker_selector(cluster: &DaskCluster) -> String {
    selector_labels(cluster, ROLE_WORKER)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(
    cluster: &DaskCluster,
    role: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut l = extra.clone();
    l.extend(selector_labels(cluster, role));
    l.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    l.insert("app.kubernetes.io/name".into(), "daskrs".into());
    l.insert("app.kubernetes.io/component".into(), role.into());
    l.insert("app.kubernetes.io/instance".into(), cluster.name_any());
    l
}

fn owned_meta(cluster: &DaskCluster, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels),
        owner_references: cluster.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;
    use crate::crd::{DaskClusterSpec, PodOverrides, WorkerSpec};

    pub fn cluster(worker: WorkerSpec) -> DaskCluster {
        let mut c = DaskCluster::new(
            "demo",
            DaskClusterSpec {
                image: None,
                image_pull_policy: None,
                image_pull_secrets: Vec::new(),
                scheduler: Default::default(),
                worker,
                autoscaling: None,
                s3: None,
                idle_timeout: None,
                tls: None,
            },
        );
        c.metadata.namespace = Some("data".into());
        c.metadata.uid = Some("0000-1111".into());
        c
    }

    pub fn worker(replicas: i32) -> WorkerSpec {
        WorkerSpec {
            replicas,
            threads: None,
            memory_limit: None,
            resources: None,
            pod: PodOverrides::default(),
        }
    }

    pub fn defaults() -> Defaults {
        Defaults {
            image: "daskrs:default".into(),
            worker_image: None,
            network_policies: true,
            operator_namespace: Some("daskrs-system".into()),
        }
    }

    /// The defaults with a workers' image of their own (`--worker-image`).
    pub fn with_worker_image() -> Defaults {
        Defaults {
            worker_image: Some("daskrs-python:default".into()),
            ..defaults()
        }
    }

    pub fn sizing() -> WorkerSizing {
        WorkerSizing {
            threads: 1,
            memory_limit: None,
        }
    }

    pub fn env_value(pod: &Pod, name: &str) -> Option<String> {
        pod.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }
}
