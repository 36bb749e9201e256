//! The cluster's NetworkPolicy: its pods take connections only from each
//! other, from the operator and from pods labelled as its clients.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    Defaults, LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGER, SCHEDULER_HTTP_PORT, SCHEDULER_PORT,
    WORKER_HTTP_PORT, WORKER_PORT, owned_meta,
};
use crate::crd::{DaskCluster, ServiceType};

/// Pods with this label set to `true`, in the cluster's namespace, may
/// connect to the cluster (a notebook's pod, a job that submits work).
pub const LABEL_CLIENT: &str = "daskrs.dev/client";
/// The label the chart gives the operator's pods.
pub const OPERATOR_NAME: &str = "daskrs-operator";

pub fn network_policy_name(cluster: &DaskCluster) -> String {
    format!("{}-daskrs", cluster.name_any())
}

fn selector(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..LabelSelector::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// Selects every pod of the cluster. Admitted to all of its ports: the
/// cluster's own pods, the operator's pods (in the operator's namespace,
/// when known) and the pods labelled `daskrs.dev/client=true` in the
/// cluster's namespace. A scheduler Service of type LoadBalancer or
/// NodePort is reached from outside the cluster's pods: then anyone is
/// admitted to the scheduler's two ports.
pub fn network_policy(cluster: &DaskCluster, defaults: &Defaults) -> NetworkPolicy {
    let name = cluster.name_any();
    let own = selector(&[(LABEL_CLUSTER, &name)]);
    let operator_namespace = match &defaults.operator_namespace {
        Some(ns) => selector(&[("kubernetes.io/metadata.name", ns)]),
        None => LabelSelector::default(),
    };
    let from = vec![
        NetworkPolicyPeer {
            pod_selector: Some(own.clone()),
            ..NetworkPolicyPeer::default()
        },
        NetworkPolicyPeer {
            pod_selector: Some(selector(&[(LABEL_CLIENT, "true")])),
            ..NetworkPolicyPeer::default()
        },
        NetworkPolicyPeer {
            pod_selector: Some(selector(&[("app.kubernetes.io/name", OPERATOR_NAME)])),
            namespace_selector: Some(operator_namespace),
            ..NetworkPolicyPeer::default()
        },
    ];
    let all_ports = [
        SCHEDULER_PORT,
        SCHEDULER_HTTP_PORT,
        WORKER_PORT,
        WORKER_HTTP_PORT,
    ];
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(all_ports.into_iter().map(tcp).collect()),
    }];
    if matches!(
        cluster.spec.scheduler.service.type_,
        ServiceType::LoadBalancer | ServiceType::NodePort
    ) {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![tcp(SCHEDULER_PORT), tcp(SCHEDULER_HTTP_PORT)]),
        });
    }
    let labels = BTreeMap::from([
        (LABEL_CLUSTER.to_string(), name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
    ]);
    NetworkPolicy {
        metadata: owned_meta(cluster, network_policy_name(cluster), labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::{cluster, defaults, worker};

    fn peers(
        p: &NetworkPolicy,
        rule: usize,
    ) -> Vec<(Option<LabelSelector>, Option<LabelSelector>)> {
        let spec = p.spec.as_ref().unwrap();
        spec.ingress.as_ref().unwrap()[rule]
            .from
            .iter()
            .flatten()
            .map(|f| (f.pod_selector.clone(), f.namespace_selector.clone()))
            .collect()
    }

    fn labels(s: &Option<LabelSelector>) -> Vec<(String, String)> {
        s.as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    #[test]
    fn the_cluster_s_pods_admit_each_other_the_operator_and_labelled_clients_only() {
        let c = cluster(worker(2));
        let p = network_policy(&c, &defaults());
        assert_eq!(p.metadata.name.as_deref(), Some("demo-daskrs"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("data"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DaskCluster", Some(true))
        );
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            labels(&spec.pod_selector),
            [("daskrs.dev/cluster".into(), "demo".into())]
        );
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        assert_eq!(spec.ingress.as_ref().unwrap().len(), 1);
        let from = peers(&p, 0);
        let described: Vec<_> = from
            .iter()
            .map(|(pod, ns)| (labels(pod), labels(ns)))
            .collect();
        assert_eq!(
            described,
            [
                (vec![("daskrs.dev/cluster".into(), "demo".into())], vec![]),
                (vec![("daskrs.dev/client".into(), "true".into())], vec![]),
                (
                    vec![("app.kubernetes.io/name".into(), "daskrs-operator".into())],
                    vec![("kubernetes.io/metadata.name".into(), "daskrs-system".into())]
                ),
            ]
        );
        // Same namespace: the first two peers name no namespace selector.
        assert!(from[0].1.is_none() && from[1].1.is_none());
        let ports: Vec<_> = spec.ingress.as_ref().unwrap()[0]
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(ports.len(), 4);
    }

    #[test]
    fn an_operator_of_unknown_namespace_is_admitted_from_any_and_a_load_balancer_from_anywhere() {
        let mut c = cluster(worker(1));
        c.spec.scheduler.service.type_ = ServiceType::LoadBalancer;
        let mut d = defaults();
        d.operator_namespace = None;
        let p = network_policy(&c, &d);
        let operator = &peers(&p, 0)[2];
        assert_eq!(operator.1, Some(LabelSelector::default()));
        let open = &p.spec.as_ref().unwrap().ingress.as_ref().unwrap()[1];
        assert!(open.from.is_none());
        let ports: Vec<_> = open
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(
            ports,
            [
                Some(IntOrString::Int(SCHEDULER_PORT)),
                Some(IntOrString::Int(SCHEDULER_HTTP_PORT))
            ]
        );
    }
}
