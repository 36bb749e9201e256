//! The worker pod template, and the hash that tells pods made from an
//! older template apart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::pod::{
    base_container, container_port, empty_dir, env, field_env, http_probe, non_empty, pod_spec,
    s3_env, volume_mount, with_tls,
};
use super::{
    Defaults, LABEL_TEMPLATE_HASH, ROLE_WORKER, WORKER_HTTP_PORT, WORKER_PORT, labels,
    scheduler_target,
};
use crate::crd::DaskCluster;

/// Where workers keep spilled results: an emptyDir, as the root file
/// system is read-only.
const LOCAL_DIR: &str = "/var/lib/daskrs";

/// How big a worker is, as validation resolved it from the spec: builders
/// never parse quantities, so a value Kubernetes cannot read is refused
/// before any pod is made instead of being dropped here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSizing {
    /// Task threads.
    pub threads: i64,
    /// Bytes the worker manages before spilling; the node's memory when None.
    pub memory_limit: Option<u64>,
}

/// A worker pod of the cluster as the spec wants it now, named by the API
/// server (`generateName`), labelled with the hash of its template.
pub fn worker_pod(cluster: &DaskCluster, defaults: &Defaults, sizing: &WorkerSizing) -> Pod {
    let spec = &cluster.spec.worker;
    let mut vars = vec![
        field_env("DASKRS_POD_NAME", "metadata.name"),
        field_env("DASKRS_POD_IP", "status.podIP"),
        env("DASKRS_SCHEDULER", &scheduler_target(cluster)),
        // The scheduler knows each worker by its pod's name, so the operator
        // can ask it to retire exactly the pods it removes.
        env("DASKRS_WORKER_NAME", "$(DASKRS_POD_NAME)"),
        env("DASKRS_HOST", "0.0.0.0"),
        env("DASKRS_PORT", &WORKER_PORT.to_string()),
        env("DASKRS_HTTP_PORT", &WORKER_HTTP_PORT.to_string()),
        env(
            "DASKRS_CONTACT_ADDRESS",
            &format!("$(DASKRS_POD_IP):{WORKER_PORT}"),
        ),
        env("DASKRS_LOCAL_DIR", LOCAL_DIR),
        env("DASKRS_NTHREADS", &sizing.threads.to_string()),
    ];
    if let Some(bytes) = sizing.memory_limit {
        vars.push(env("DASKRS_MEMORY_LIMIT", &bytes.to_string()));
    }
    vars.extend(s3_env(cluster));
    let (volumes, mounts) = with_tls(
        cluster,
        vec![empty_dir("local-dir"), empty_dir("tmp")],
        vec![
            volume_mount("local-dir", LOCAL_DIR),
            volume_mount("tmp", "/tmp"),
        ],
    );
    let container = Container {
        name: ROLE_WORKER.into(),
        args: Some(vec!["worker".into()]),
        ports: Some(vec![
            container_port("tcp-peer", WORKER_PORT),
            container_port("http", WORKER_HTTP_PORT),
        ]),
        readiness_probe: Some(http_probe("/ready", "http", 5, 3)),
        liveness_probe: Some(http_probe("/health", "http", 10, 6)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        ..base_container(
            cluster,
            defaults.worker_image_for(cluster),
            vars,
            &spec.pod.env,
        )
    };
    // OnFailure: the kubelet restarts a crashed worker with its own backoff;
    // a worker that was retired exits 0, and the pod ends.
    let pod = pod_spec(cluster, &spec.pod, container, volumes, "OnFailure");
    let mut labels = labels(cluster, ROLE_WORKER, &spec.pod.labels);
    let annotations = non_empty(&spec.pod.annotations);
    let hash = template_hash(&labels, &annotations, &pod);
    labels.insert(LABEL_TEMPLATE_HASH.into(), hash);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-worker-", cluster.name_any())),
            namespace: cluster.namespace(),
            labels: Some(labels),
            annotations,
            owner_references: cluster.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(pod),
        status: None,
    }
}

/// A short, stable hash of what a worker pod is made from. Pods whose hash
/// differs from the current one are replaced.
fn template_hash(
    labels: &BTreeMap<String, String>,
    annotations: &Option<BTreeMap<String, String>>,
    pod: &PodSpec,
) -> String {
    let mut h = Sha256::new();
    for part in [
        serde_json::to_vec(labels),
        serde_json::to_vec(annotations),
        serde_json::to_vec(pod),
    ] {
        h.update(part.expect("Kubernetes objects always serialise"));
        h.update([0]);
    }
    h.finalize()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The template hash a pod was made with.
pub fn pod_template_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(LABEL_TEMPLATE_HASH)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cluster, defaults, env_value, sizing, with_worker_image, worker};
    use super::super::{LABEL_CLUSTER, LABEL_ROLE};
    use super::*;

    #[test]
    fn a_minimal_cluster_gets_a_restricted_worker_pod_pointed_at_its_scheduler() {
        let c = cluster(worker(2));
        let pod = worker_pod(&c, &defaults(), &sizing());
        let meta = &pod.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("demo-worker-"));
        assert_eq!(meta.namespace.as_deref(), Some("data"));
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("DaskCluster", "0000-1111")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_CLUSTER], "demo");
        assert_eq!(labels[LABEL_ROLE], ROLE_WORKER);
        assert_eq!(labels[LABEL_TEMPLATE_HASH].len(), 10);

        let spec = pod.spec.as_ref().unwrap();
        let c0 = &spec.containers[0];
        assert_eq!(c0.image.as_deref(), Some("daskrs:default"));
        assert_eq!(
            env_value(&pod, "DASKRS_SCHEDULER").as_deref(),
            Some("demo-scheduler:8786")
        );
        assert_eq!(env_value(&pod, "DASKRS_NTHREADS").as_deref(), Some("1"));
        assert_eq!(env_value(&pod, "DASKRS_MEMORY_LIMIT"), None);
        assert_eq!(
            env_value(&pod, "DASKRS_CONTACT_ADDRESS").as_deref(),
            Some("$(DASKRS_POD_IP):8788")
        );
        // The restricted Pod Security Standard.
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let sc = c0.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
    }

    #[test]
    fn workers_run_the_spec_image_else_the_worker_image_else_the_default_image() {
        let image = |c: &DaskCluster, d: &Defaults| {
            worker_pod(c, d, &sizing()).spec.unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        };
        let with_worker_image = with_worker_image();
        let c = cluster(worker(1));
        assert_eq!(image(&c, &defaults()), "daskrs:default");
        assert_eq!(image(&c, &with_worker_image), "daskrs-python:default");
        let mut named = cluster(worker(1));
        named.spec.image = Some("team/daskrs:1".into());
        assert_eq!(image(&named, &with_worker_image), "team/daskrs:1");
        assert_eq!(image(&named, &defaults()), "team/daskrs:1");
    }

    #[test]
    fn the_resolved_threads_and_memory_reach_the_worker_through_its_environment() {
        let sized = WorkerSizing {
            threads: 8,
            memory_limit: Some(512 << 20),
        };
        let pod = worker_pod(&cluster(worker(1)), &defaults(), &sized);
        assert_eq!(env_value(&pod, "DASKRS_NTHREADS").as_deref(), Some("8"));
        assert_eq!(
            env_value(&pod, "DASKRS_MEMORY_LIMIT"),
            Some((512u64 << 20).to_string())
        );
    }

    #[test]
    fn the_template_hash_follows_the_pod_not_the_replica_count() {
        let hash = |c: &DaskCluster| {
            pod_template_hash(&worker_pod(c, &defaults(), &sizing()))
                .unwrap()
                .to_string()
        };
        let base = hash(&cluster(worker(2)));
        assert_eq!(base, hash(&cluster(worker(7))));
        let mut w = worker(2);
        w.pod.env.push(env("RUST_LOG", "debug"));
        assert_ne!(base, hash(&cluster(w)));
        let mut c = cluster(worker(2));
        c.spec.image = Some("daskrs:next".into());
        assert_ne!(base, hash(&c));
        let mut w = worker(2);
        w.pod.labels.insert("team".into(), "data".into());
        assert_ne!(base, hash(&cluster(w)));
    }

    #[test]
    fn a_users_env_variable_replaces_the_operators_of_the_same_name() {
        let mut w = worker(1);
        w.pod.env.push(env("DASKRS_NTHREADS", "3"));
        let pod = worker_pod(&cluster(w), &defaults(), &sizing());
        let vars = pod.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert_eq!(
            vars.iter().filter(|e| e.name == "DASKRS_NTHREADS").count(),
            1
        );
        assert_eq!(env_value(&pod, "DASKRS_NTHREADS").as_deref(), Some("3"));
    }
}
