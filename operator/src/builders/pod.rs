//! What the scheduler and worker pods share: the container's security
//! settings and environment, the pod spec, probes, volumes and S3 access.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, Probe, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{DaskCluster, PodOverrides};

/// The uid and gid of the unprivileged user every daskrs image runs as.
const RUNTIME_UID: i64 = 65532;
/// Longer than the worker's own 25 s hand-off on SIGTERM.
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// Where SQL finds its data: object stores (S3 per the spec) and no local
/// files, unless the spec's `env` sets `DASKRS_SQL_LOCAL_ROOTS` to the
/// directories it may use.
///
/// Also the cluster token, from the cluster's Secret, and where the TLS
/// files are mounted (see [`with_tls`]).
pub(super) fn s3_env(cluster: &DaskCluster) -> Vec<EnvVar> {
    let mut out = vec![
        env("DASKRS_SQL_LOCAL_ROOTS", "none"),
        secret_env(
            "DASKRS_TOKEN",
            &super::token_secret_name(cluster),
            super::TOKEN_KEY,
            false,
        ),
    ];
    if cluster.spec.tls_enabled() {
        out.push(env("DASKRS_TLS_DIR", super::TLS_DIR));
    }
    let Some(s3) = &cluster.spec.s3 else {
        return out;
    };
    if let Some(region) = &s3.region {
        out.push(env("DASKRS_S3_REGION", region));
        out.push(env("AWS_REGION", region));
    }
    if let Some(endpoint) = &s3.endpoint {
        out.push(env("DASKRS_S3_ENDPOINT", endpoint));
        // The AWS SDKs' own variable, which Python tasks' libraries read
        // (s3fs through botocore, pyarrow), so they reach the same server.
        out.push(env("AWS_ENDPOINT_URL_S3", endpoint));
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

pub(super) fn base_container(
    cluster: &DaskCluster,
    image: String,
    mut env: Vec<EnvVar>,
    user_env: &[EnvVar],
) -> Container {
    // The user's variables come last and replace the operator's of the same
    // name, so a manifest can override any setting.
    env.retain(|e| !user_env.iter().any(|u| u.name == e.name));
    env.extend(user_env.iter().cloned());
    Container {
        image: Some(image),
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

pub(super) fn pod_spec(
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
        // Scheduler and workers never call the Kubernetes API.
        automount_service_account_token: Some(false),
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

pub(super) fn non_empty(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then(|| m.clone())
}

pub(super) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

pub(super) fn field_env(name: &str, path: &str) -> EnvVar {
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

pub(super) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

pub(super) fn http_probe(path: &str, port: &str, period: i32, failures: i32) -> Probe {
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

pub(super) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// `volumes` and `mounts` with the cluster's TLS files, when it has TLS.
pub(super) fn with_tls(
    cluster: &DaskCluster,
    mut volumes: Vec<Volume>,
    mut mounts: Vec<VolumeMount>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    if let Some((volume, mount)) = super::tls::tls_volume(cluster) {
        volumes.push(volume);
        mounts.push(mount);
    }
    (volumes, mounts)
}

pub(super) fn volume_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cluster, worker};
    use super::*;
    use crate::crd::S3Spec;

    fn value(vars: &[EnvVar], name: &str) -> Option<String> {
        vars.iter().find(|e| e.name == name)?.value.clone()
    }

    #[test]
    fn an_s3_endpoint_reaches_daskrs_and_the_python_libraries_alike() {
        let mut c = cluster(worker(1));
        c.spec.s3 = Some(S3Spec {
            region: Some("eu-west-1".into()),
            endpoint: Some("http://minio:9000".into()),
            ..S3Spec::default()
        });
        let vars = s3_env(&c);
        for name in ["DASKRS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3"] {
            assert_eq!(
                value(&vars, name).as_deref(),
                Some("http://minio:9000"),
                "{name}"
            );
        }
        for name in ["DASKRS_S3_REGION", "AWS_REGION"] {
            assert_eq!(value(&vars, name).as_deref(), Some("eu-west-1"), "{name}");
        }
        assert_eq!(
            value(&vars, "DASKRS_SQL_LOCAL_ROOTS").as_deref(),
            Some("none")
        );

        // Without an endpoint, every library uses AWS's.
        c.spec.s3 = Some(S3Spec::default());
        let vars = s3_env(&c);
        assert!(
            !vars
                .iter()
                .any(|e| e.name.contains("ENDPOINT") || e.name.contains("REGION")),
            "{vars:?}"
        );
    }
}
