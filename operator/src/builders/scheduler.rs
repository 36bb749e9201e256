//! The scheduler: one pod behind a Deployment, reached through a Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, PodTemplateSpec, Service, ServicePort, ServiceSpec as KubeServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{
    base_container, container_port, empty_dir, env, http_probe, non_empty, pod_spec, s3_env,
    volume_mount, with_tls,
};
use super::{
    Defaults, ROLE_SCHEDULER, SCHEDULER_HTTP_PORT, SCHEDULER_PORT, labels, owned_meta,
    scheduler_name, selector_labels,
};
use crate::crd::DaskCluster;

pub fn scheduler_service(cluster: &DaskCluster) -> Service {
    let spec = &cluster.spec.scheduler;
    let mut meta = owned_meta(
        cluster,
        scheduler_name(cluster),
        labels(cluster, ROLE_SCHEDULER, &BTreeMap::new()),
    );
    if !spec.service.annotations.is_empty() {
        meta.annotations = Some(spec.service.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(KubeServiceSpec {
            type_: Some(spec.service.type_.as_str().into()),
            selector: Some(selector_labels(cluster, ROLE_SCHEDULER)),
            ports: Some(vec![
                service_port("tcp-comm", SCHEDULER_PORT),
                service_port("http-dashboard", SCHEDULER_HTTP_PORT),
            ]),
            ..KubeServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub fn scheduler_deployment(cluster: &DaskCluster, defaults: &Defaults) -> Deployment {
    let spec = &cluster.spec.scheduler;
    let pod_labels = labels(cluster, ROLE_SCHEDULER, &spec.pod.labels);
    let mut vars = vec![
        env("DASKRS_HOST", "0.0.0.0"),
        env("DASKRS_PORT", &SCHEDULER_PORT.to_string()),
        env("DASKRS_HTTP_PORT", &SCHEDULER_HTTP_PORT.to_string()),
    ];
    vars.extend(s3_env(cluster));
    let (volumes, mounts) = with_tls(
        cluster,
        vec![empty_dir("tmp")],
        vec![volume_mount("tmp", "/tmp")],
    );
    let container = Container {
        name: ROLE_SCHEDULER.into(),
        args: Some(vec!["scheduler".into()]),
        ports: Some(vec![
            container_port("tcp-comm", SCHEDULER_PORT),
            container_port("http-dashboard", SCHEDULER_HTTP_PORT),
        ]),
        readiness_probe: Some(http_probe("/ready", "http-dashboard", 5, 3)),
        liveness_probe: Some(http_probe("/health", "http-dashboard", 10, 6)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        ..base_container(
            cluster,
            defaults.scheduler_image_for(cluster),
            vars,
            &spec.pod.env,
        )
    };
    let pod = pod_spec(cluster, &spec.pod, container, volumes, "Always");
    Deployment {
        metadata: owned_meta(
            cluster,
            scheduler_name(cluster),
            labels(cluster, ROLE_SCHEDULER, &BTreeMap::new()),
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            // One scheduler at a time: a second one would split the workers.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster, ROLE_SCHEDULER)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: non_empty(&spec.pod.annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cluster, defaults, with_worker_image, worker};
    use super::super::{scheduler_address, worker_selector};
    use super::*;

    #[test]
    fn the_scheduler_runs_alone_behind_its_service() {
        let c = cluster(worker(1));
        let d = scheduler_deployment(&c, &defaults());
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(
            pod.containers[0].args.as_deref(),
            Some(&["scheduler".to_string()][..])
        );
        let svc = scheduler_service(&c);
        let s = svc.spec.as_ref().unwrap();
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(s.selector, spec.selector.match_labels);
        let ports: Vec<i32> = s.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, vec![SCHEDULER_PORT, SCHEDULER_HTTP_PORT]);
        assert_eq!(scheduler_address(&c), "demo-scheduler.data.svc:8786");
        assert_eq!(
            worker_selector(&c),
            "daskrs.dev/cluster=demo,daskrs.dev/role=worker"
        );
    }

    #[test]
    fn the_scheduler_runs_the_default_image_not_the_workers() {
        let image = |c: &DaskCluster, d: &Defaults| {
            let d = scheduler_deployment(c, d);
            d.spec.unwrap().template.spec.unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        };
        let with_worker_image = with_worker_image();
        let mut c = cluster(worker(1));
        assert_eq!(image(&c, &with_worker_image), "daskrs:default");
        c.spec.image = Some("team/daskrs:1".into());
        assert_eq!(image(&c, &with_worker_image), "team/daskrs:1");
    }
}
