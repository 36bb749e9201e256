//! Build: the objects a valid spec asks for, from the pure builders. The
//! apply stage makes the world look like this and nothing else.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::validate::Valid;
use crate::builders::{self, Defaults};
use crate::crd::DaskCluster;

pub struct Desired {
    pub service: Service,
    /// None when the operator makes no NetworkPolicies.
    pub network_policy: Option<NetworkPolicy>,
    pub deployment: Deployment,
    /// Every worker pod is made from this.
    pub worker: Pod,
    /// The worker template's hash; pods with another one are stale.
    pub template_hash: String,
}

pub fn build(cluster: &DaskCluster, valid: &Valid, defaults: &Defaults) -> Desired {
    let worker = builders::worker_pod(cluster, defaults, &valid.worker);
    let template_hash = builders::pod_template_hash(&worker)
        .unwrap_or_default()
        .to_string();
    Desired {
        service: builders::scheduler_service(cluster),
        network_policy: defaults
            .network_policies
            .then(|| builders::network_policy(cluster, defaults)),
        deployment: builders::scheduler_deployment(cluster, defaults),
        worker,
        template_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fixtures::fixture;
    use crate::reconcile::validate::validate;

    fn env(pod: &Pod, name: &str) -> Option<String> {
        pod.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn the_worker_template_carries_what_validation_resolved_and_its_hash() {
        let c = fixture("sized");
        let valid = validate(&c).expect("valid");
        let defaults = Defaults {
            image: "daskrs:test".into(),
            worker_image: None,
            network_policies: true,
            operator_namespace: None,
        };
        let desired = build(&c, &valid, &defaults);
        assert_eq!(
            env(&desired.worker, "DASKRS_NTHREADS").as_deref(),
            Some("2")
        );
        assert_eq!(
            env(&desired.worker, "DASKRS_MEMORY_LIMIT"),
            Some((3u64 << 30).to_string())
        );
        assert_eq!(
            builders::pod_template_hash(&desired.worker),
            Some(desired.template_hash.as_str())
        );
        assert_eq!(desired.template_hash.len(), 10);
        assert_eq!(
            desired.deployment.metadata.name.as_deref(),
            Some("demo-scheduler")
        );
    }
}
