//! The objects a DaskCluster is made of: the scheduler Deployment and
//! Service and the worker pod template. Pure functions of the resource and
//! the operator's defaults, so they are tested without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec as KubeServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{DaskCluster, PodOverrides};
use crate::quantity;

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

/// Where workers keep spilled results: an emptyDir, as the root file
/// system is read-only.
const LOCAL_DIR: &str = "/var/lib/daskrs";
/// The uid and gid of the runtime image's unprivileged user.
const RUNTIME_UID: i64 = 65532;
/// Longer than the worker's own 25 s hand-off on SIGTERM.
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// What the operator fills in where the spec is silent.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub image: String,
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

/// The scheduler's HTTP API, as the operator reaches it.
pub fn scheduler_http_url(cluster: &DaskCluster) -> String {
    format!(
        "http://{}.{}.svc:{SCHEDULER_HTTP_PORT}",
        scheduler_name(cluster),
        cluster.namespace().unwrap_or_default()
    )
}

pub fn selector_labels(cluster: &DaskCluster, role: &str) -> BTreeMap<String, String> {
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
        volume_mounts: Some(vec![volume_mount("tmp", "/tmp")]),
        ..base_container(cluster, defaults, vars, &spec.pod.env)
    };
    let pod = pod_spec(
        cluster,
        &spec.pod,
        container,
        vec![empty_dir("tmp")],
        "Always",
    );
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

/// A worker pod of the cluster as the spec wants it now, named by the API
/// server (`generateName`), labelled with the hash of its template.
pub fn worker_pod(cluster: &DaskCluster, defaults: &Defaults) -> Pod {
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
        env("DASKRS_NTHREADS", &worker_threads(cluster).to_string()),
    ];
    if let Some(bytes) = worker_memory_limit(cluster) {
        vars.push(env("DASKRS_MEMORY_LIMIT", &bytes.to_string()));
    }
    vars.extend(s3_env(cluster));
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
        volume_mounts: Some(vec![
            volume_mount("local-dir", LOCAL_DIR),
            volume_mount("tmp", "/tmp"),
        ]),
        ..base_container(cluster, defaults, vars, &spec.pod.env)
    };
    // OnFailure: the kubelet restarts a crashed worker with its own backoff;
    // a worker that was retired exits 0, and the pod ends.
    let pod = pod_spec(
        cluster,
        &spec.pod,
        container,
        vec![empty_dir("local-dir"), empty_dir("tmp")],
        "OnFailure",
    );
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

/// Threads per worker: the spec's, else the CPU limit or request rounded
/// up, else 1.
pub fn worker_threads(cluster: &DaskCluster) -> i64 {
    let spec = &cluster.spec.worker;
    if let Some(t) = spec.threads {
        return i64::from(t.max(1));
    }
    resource(&spec.resources, "cpu")
        .and_then(|q| quantity::cpu_millis(&q.0).ok())
        .map(|m| ((m + 999) / 1000).max(1))
        .unwrap_or(1)
}

/// Bytes a worker manages: the spec's, else the memory limit or request.
pub fn worker_memory_limit(cluster: &DaskCluster) -> Option<u64> {
    let spec = &cluster.spec.worker;
    let q = spec
        .memory_limit
        .clone()
        .or_else(|| resource(&spec.resources, "memory"))?;
    quantity::bytes(&q.0).ok()
}

fn resource(
    r: &Option<ResourceRequirements>,
    name: &str,
) -> Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
    let r = r.as_ref()?;
    r.limits
        .as_ref()
        .and_then(|l| l.get(name))
        .or_else(|| r.requests.as_ref().and_then(|l| l.get(name)))
        .cloned()
}

fn s3_env(cluster: &DaskCluster) -> Vec<EnvVar> {
    let Some(s3) = &cluster.spec.s3 else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(region) = &s3.region {
        out.push(env("DASKRS_S3_REGION", region));
        out.push(env("AWS_REGION", region));
    }
    if let Some(endpoint) = &s3.endpoint {
        out.push(env("DASKRS_S3_ENDPOINT", endpoint));
    }
    if let Some(n) = s3.max_concurrency {
        out.push(env("DASKRS_S3_MAX_CONCURRENCY", &n.to_string()));
    }
    if let Some(secret) = &s3.credentials_secret {
        out.push(secret_env(
            "AWS_ACCESS_KEY_ID",
            &secret.name,
            &secret.access_key_id_key,
            false,
        ));
        out.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            &secret.name,
            &secret.secret_access_key_key,
            false,
        ));
        if let Some(key) = &secret.session_token_key {
            out.push(secret_env("AWS_SESSION_TOKEN", &secret.name, key, true));
        }
    }
    out
}

fn base_container(
    cluster: &DaskCluster,
    defaults: &Defaults,
    mut env: Vec<EnvVar>,
    user_env: &[EnvVar],
) -> Container {
    // The user's variables come last and replace the operator's of the same
    // name, so a manifest can override any setting.
    env.retain(|e| !user_env.iter().any(|u| u.name == e.name));
    env.extend(user_env.iter().cloned());
    Container {
        image: Some(
            cluster
                .spec
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        image_pull_policy: cluster.spec.image_pull_policy.map(|p| p.as_str().into()),
        env: Some(env),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn pod_spec(
    cluster: &DaskCluster,
    overrides: &PodOverrides,
    container: Container,
    volumes: Vec<Volume>,
    restart_policy: &str,
) -> PodSpec {
    let pull_secrets = &cluster.spec.image_pull_secrets;
    PodSpec {
        containers: vec![container],
        restart_policy: Some(restart_policy.into()),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        volumes: Some(volumes),
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| pull_secrets.clone()),
        node_selector: non_empty(&overrides.node_selector),
        tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
        affinity: overrides.affinity.clone(),
        service_account_name: overrides.service_account_name.clone(),
        security_context: Some(
            overrides
                .security_context
                .clone()
                .unwrap_or_else(restricted_pod_security),
        ),
        enable_service_links: Some(false),
        ..PodSpec::default()
    }
}

/// A pod security context that meets the `restricted` Pod Security
/// Standard together with the container's own.
fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUNTIME_UID),
        run_as_group: Some(RUNTIME_UID),
        fs_group: Some(RUNTIME_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn non_empty(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then(|| m.clone())
}

pub(crate) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn volume_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DaskClusterSpec, WorkerSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn cluster(worker: WorkerSpec) -> DaskCluster {
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
            },
        );
        c.metadata.namespace = Some("data".into());
        c.metadata.uid = Some("0000-1111".into());
        c
    }

    fn worker(replicas: i32) -> WorkerSpec {
        WorkerSpec {
            replicas,
            threads: None,
            memory_limit: None,
            resources: None,
            pod: PodOverrides::default(),
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            image: "daskrs:default".into(),
        }
    }

    fn env_value(pod: &Pod, name: &str) -> Option<String> {
        pod.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    fn resources(pairs: &[(&str, &str)], limits: bool) -> Option<ResourceRequirements> {
        let m: BTreeMap<String, Quantity> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
        Some(if limits {
            ResourceRequirements {
                limits: Some(m),
                ..ResourceRequirements::default()
            }
        } else {
            ResourceRequirements {
                requests: Some(m),
                ..ResourceRequirements::default()
            }
        })
    }

    #[test]
    fn a_minimal_cluster_gets_a_restricted_worker_pod_pointed_at_its_scheduler() {
        let c = cluster(worker(2));
        let pod = worker_pod(&c, &defaults());
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
    fn threads_and_memory_default_from_resources() {
        let mut w = worker(1);
        w.resources = resources(&[("cpu", "1500m"), ("memory", "3Gi")], true);
        let pod = worker_pod(&cluster(w.clone()), &defaults());
        assert_eq!(env_value(&pod, "DASKRS_NTHREADS").as_deref(), Some("2"));
        assert_eq!(
            env_value(&pod, "DASKRS_MEMORY_LIMIT"),
            Some((3u64 << 30).to_string())
        );

        w.resources = resources(&[("cpu", "4"), ("memory", "1G")], false);
        let pod = worker_pod(&cluster(w.clone()), &defaults());
        assert_eq!(env_value(&pod, "DASKRS_NTHREADS").as_deref(), Some("4"));
        assert_eq!(
            env_value(&pod, "DASKRS_MEMORY_LIMIT").as_deref(),
            Some("1000000000")
        );

        w.threads = Some(8);
        w.memory_limit = Some(Quantity("512Mi".into()));
        let pod = worker_pod(&cluster(w), &defaults());
        assert_eq!(env_value(&pod, "DASKRS_NTHREADS").as_deref(), Some("8"));
        assert_eq!(
            env_value(&pod, "DASKRS_MEMORY_LIMIT"),
            Some((512u64 << 20).to_string())
        );
    }

    #[test]
    fn the_template_hash_follows_the_pod_not_the_replica_count() {
        let hash = |c: &DaskCluster| {
            pod_template_hash(&worker_pod(c, &defaults()))
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
    fn user_env_replaces_the_operators() {
        let mut w = worker(1);
        w.pod.env.push(env("DASKRS_NTHREADS", "3"));
        let pod = worker_pod(&cluster(w), &defaults());
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
}
