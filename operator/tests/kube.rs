//! The operator against a real kube-apiserver, etcd and
//! kube-controller-manager (so Deployments make ReplicaSets and pods, and
//! owner references cascade), driven with the real kubectl. There is no
//! kubelet: tests set pod states themselves, and a stub answers for the
//! scheduler's HTTP API.

mod harness;

use std::collections::BTreeSet;
use std::time::Duration;

use harness::{ControlPlane, Operator, SchedulerStub, control_plane, stderr, stdout, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use daskrs_operator::crd::{DaskCluster, Phase};

const WAIT: Duration = Duration::from_secs(60);

fn apply(plane: &ControlPlane, ns: &str, yaml: &str) -> std::process::Output {
    plane.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], Some(yaml))
}

fn must_apply(plane: &ControlPlane, ns: &str, yaml: &str) {
    let out = apply(plane, ns, yaml);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        stderr(&out)
    );
}

/// Worker pods of cluster `name` that are not being deleted.
async fn workers(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut v: Vec<Pod> = pods
        .list(
            &ListParams::default()
                .labels(&format!("daskrs.dev/cluster={name},daskrs.dev/role=worker")),
        )
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    v.sort_by_key(|p| p.name_any());
    v
}

async fn wait_workers(client: &Client, ns: &str, name: &str, n: usize) -> Vec<Pod> {
    wait_for(&format!("{n} worker pods of {name}"), WAIT, || async {
        let w = workers(client, ns, name).await;
        (w.len() == n).then_some(w)
    })
    .await
}

/// Plays the kubelet for one pod: Running, with an IP, Ready or not.
async fn set_pod(client: &Client, ns: &str, pod: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({ "status": {
        "phase": "Running",
        "podIP": "10.1.0.7",
        "conditions": [
            { "type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now },
            { "type": "ContainersReady", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now },
        ],
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("set pod status");
}

async fn set_failed(client: &Client, ns: &str, pod: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = serde_json::json!({ "status": {
        "phase": "Failed", "reason": "Evicted", "message": "The node was low on memory.",
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("set pod failed");
}

/// Marks the scheduler pod ready, so its Deployment becomes available.
async fn scheduler_ready(client: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = wait_for("the scheduler pod", WAIT, || async {
        pods.list(&ListParams::default().labels(&format!(
            "daskrs.dev/cluster={name},daskrs.dev/role=scheduler"
        )))
        .await
        .ok()?
        .items
        .into_iter()
        .next()
    })
    .await;
    set_pod(client, ns, &pod.name_any(), true).await;
}

async fn cluster(client: &Client, ns: &str, name: &str) -> DaskCluster {
    Api::<DaskCluster>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get DaskCluster")
}

async fn wait_status<F: Fn(&DaskCluster) -> bool>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    f: F,
) -> DaskCluster {
    wait_for(what, WAIT, || async {
        let c = cluster(client, ns, name).await;
        f(&c).then_some(c)
    })
    .await
}

/// How many objects of a kind the namespace of `api` holds; None while the
/// API server does not answer.
async fn count<K>(api: &Api<K>) -> Option<usize>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    Some(api.list(&ListParams::default()).await.ok()?.items.len())
}

fn env_of(pod: &Pod, name: &str) -> Option<k8s_openapi::api::core::v1::EnvVar> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crd_is_served_and_rejects_invalid_manifests() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "crd").await;

    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: minimal}\nspec:\n  worker: {replicas: 2}\n",
    );
    let c = cluster(&client, &ns, "minimal").await;
    assert_eq!(c.spec.worker.replicas, 2);

    let bad = [
        (
            "replicas: -1",
            "spec:\n  worker: {replicas: -1}\n",
            "spec.worker.replicas",
        ),
        (
            "min above max",
            "spec:\n  worker: {replicas: 1}\n  autoscaling: {minReplicas: 5, maxReplicas: 2}\n",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            "unknown pull policy",
            "spec:\n  imagePullPolicy: Sometimes\n  worker: {replicas: 1}\n",
            "spec.imagePullPolicy",
        ),
        (
            "a secret in the manifest",
            "spec:\n  worker:\n    replicas: 1\n    env: [{name: AWS_SECRET_ACCESS_KEY, value: hunter2}]\n",
            "put AWS credentials in a Secret",
        ),
        ("no worker", "spec: {}\n", "spec.worker: Required value"),
        (
            "idle timeout without unit",
            "spec:\n  worker: {replicas: 1}\n  idleTimeout: \"10\"\n",
            "spec.idleTimeout",
        ),
        (
            "threads zero",
            "spec:\n  worker: {replicas: 1, threads: 0}\n",
            "spec.worker.threads",
        ),
        (
            "endpoint without scheme",
            "spec:\n  worker: {replicas: 1}\n  s3: {endpoint: minio:9000}\n",
            "spec.s3.endpoint",
        ),
    ];
    for (what, spec, expect) in bad {
        let yaml = format!(
            "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {{name: bad}}\n{spec}"
        );
        let out = apply(plane, &ns, &yaml);
        assert!(!out.status.success(), "{what}: accepted");
        let err = stderr(&out);
        assert!(
            err.contains(expect),
            "{what}: the error does not say {expect:?}: {err}"
        );
    }

    // A Secret reference is fine; so is a literal of another variable.
    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: s3}\nspec:\n  worker:\n    replicas: 1\n    env: [{name: AWS_SECRET_ACCESS_KEY, valueFrom: {secretKeyRef: {name: s3, key: secret}}}, {name: RUST_LOG, value: info}]\n  s3: {region: eu-west-1, credentialsSecret: {name: s3}}\n",
    );

    let out = plane.kubectl(&["get", "dsk", "-n", &ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let header = stdout(&out).lines().next().unwrap_or_default().to_string();
    for col in ["NAME", "WORKERS", "READY", "PHASE", "SCHEDULER", "AGE"] {
        assert!(header.contains(col), "no {col} column in {header:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_refuses_cpu_and_memory_kubernetes_cannot_read_naming_the_field() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "cel").await;
    let bad = [
        (
            "spec:\n  worker: {replicas: 1, memoryLimit: 4Gb}\n",
            "spec.worker.memoryLimit",
        ),
        (
            "spec:\n  worker:\n    replicas: 1\n    resources: {limits: {cpu: two}}\n",
            "spec.worker.resources.limits",
        ),
        (
            "spec:\n  worker:\n    replicas: 1\n    resources: {requests: {memory: 4GB}}\n",
            "spec.worker.resources.requests",
        ),
        (
            "spec:\n  scheduler: {resources: {limits: {memory: 1Gb}}}\n  worker: {replicas: 1}\n",
            "spec.scheduler.resources.limits",
        ),
    ];
    for (spec, field) in bad {
        let yaml = format!(
            "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {{name: bad}}\n{spec}"
        );
        let out = apply(plane, &ns, &yaml);
        assert!(!out.status.success(), "accepted: {spec}");
        let err = stderr(&out);
        assert!(
            err.contains(field) && err.contains("Kubernetes quantit"),
            "the error does not name {field}: {err}"
        );
    }
    // Plain numbers are quantities too, and so is every suffix Kubernetes reads.
    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: good}\nspec:\n  scheduler: {resources: {requests: {cpu: 250m, memory: 512Mi}}}\n  worker:\n    replicas: 1\n    memoryLimit: 4294967296\n    resources: {limits: {cpu: 2, memory: 4G}, requests: {cpu: \"1.5\", memory: 1e9}}\n",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_the_crd_lets_through_but_no_pod_could_use_is_reported_and_waits_for_an_edit() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "invalid").await;
    let (_stub, url) = SchedulerStub::start().await;
    let _op = Operator::start(plane, &ns, "op", &url);
    let manifest = |name: &str, worker: &str, extra: &str| {
        format!(
            "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {{name: {name}}}\nspec:\n  worker:\n    replicas: 2\n{worker}{extra}"
        )
    };
    // The CRD's rules look at cpu and memory only, and its pattern cannot
    // tell a duration longer than any clock.
    let cases = [
        (
            "gpu",
            manifest(
                "gpu",
                "    resources: {limits: {nvidia.com/gpu: one}}\n",
                "",
            ),
            "spec.worker.resources.limits[nvidia.com/gpu]",
        ),
        (
            "forever",
            manifest("forever", "", "  idleTimeout: 99999999999999999999h\n"),
            "spec.idleTimeout",
        ),
    ];
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for (name, yaml, field) in &cases {
        must_apply(plane, &ns, yaml);
        let c = wait_status(&client, &ns, name, "a SpecValid=False condition", |c| {
            c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "SpecValid" && c.status == "False")
            })
        })
        .await;
        let s = c.status.unwrap();
        let cond = s
            .conditions
            .iter()
            .find(|c| c.type_ == "SpecValid")
            .unwrap();
        assert_eq!(cond.reason, "InvalidSpec");
        assert!(
            cond.message.contains(field),
            "{field} not named: {}",
            cond.message
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(s.observed_generation, c.metadata.generation);
        wait_for(
            &format!("an InvalidSpec event naming {field}"),
            WAIT,
            || async {
                let out = plane.kubectl(&[
                    "get",
                    "events.v1.events.k8s.io",
                    "-n",
                    &ns,
                    "--field-selector",
                    "reason=InvalidSpec",
                    "-o",
                    "jsonpath={.items[*].note}",
                ]);
                stdout(&out).contains(field).then_some(())
            },
        )
        .await;
        // The condition is written by the pass that would have made them.
        assert!(workers(&client, &ns, name).await.is_empty(), "pods made");
        assert!(
            deployments
                .get_opt(&format!("{name}-scheduler"))
                .await
                .expect("get Deployment")
                .is_none(),
            "a scheduler applied for an invalid spec"
        );
    }

    // Fixed, the cluster is made and the condition clears.
    must_apply(
        plane,
        &ns,
        &manifest("gpu", "    resources: {limits: {nvidia.com/gpu: 1}}\n", ""),
    );
    wait_workers(&client, &ns, "gpu", 2).await;
    wait_status(&client, &ns, "gpu", "SpecValid=True", |c| {
        c.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "SpecValid" && c.status == "True")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_becomes_a_scheduler_and_workers_and_deletion_cascades() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "life").await;
    let (_stub, url) = SchedulerStub::start().await;
    let _op = Operator::start(plane, &ns, "op", &url);

    must_apply(
        plane,
        &ns,
        r#"
apiVersion: daskrs.dev/v1alpha1
kind: DaskCluster
metadata: {name: demo}
spec:
  scheduler:
    service: {type: ClusterIP, annotations: {example.com/note: scheduler}}
  worker:
    replicas: 3
    resources:
      requests: {cpu: "1500m", memory: 2Gi}
      limits: {cpu: "2", memory: 4Gi}
    env: [{name: RUST_LOG, value: debug}]
    labels: {team: data}
  s3:
    region: eu-west-1
    endpoint: http://minio:9000
    credentialsSecret: {name: s3-creds}
"#,
    );
    let pods = wait_workers(&client, &ns, "demo", 3).await;
    let dsk = cluster(&client, &ns, "demo").await;
    for p in &pods {
        let owner = &p.owner_references()[0];
        assert_eq!(owner.kind, "DaskCluster");
        assert_eq!(owner.name, "demo");
        assert_eq!(Some(owner.uid.clone()), dsk.metadata.uid);
        assert_eq!(owner.controller, Some(true));
        assert_eq!(p.labels().get("team").map(String::as_str), Some("data"));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("daskrs:test"));
        assert_eq!(c.args.as_deref(), Some(&["worker".to_string()][..]));
        let ports: BTreeSet<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(ports, BTreeSet::from([8788, 8789]));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "4Gi");
        let value = |n| env_of(p, n).and_then(|e| e.value);
        assert_eq!(
            value("DASKRS_SCHEDULER").as_deref(),
            Some("demo-scheduler:8786")
        );
        assert_eq!(value("DASKRS_NTHREADS").as_deref(), Some("2"));
        assert_eq!(value("DASKRS_MEMORY_LIMIT"), Some((4u64 << 30).to_string()));
        assert_eq!(value("DASKRS_S3_REGION").as_deref(), Some("eu-west-1"));
        for name in ["DASKRS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3"] {
            assert_eq!(value(name).as_deref(), Some("http://minio:9000"), "{name}");
        }
        assert_eq!(value("RUST_LOG").as_deref(), Some("debug"));
        // SQL in the pods reads object stores, no local file.
        assert_eq!(value("DASKRS_SQL_LOCAL_ROOTS").as_deref(), Some("none"));
        let key = env_of(p, "AWS_SECRET_ACCESS_KEY")
            .and_then(|e| e.value_from?.secret_key_ref)
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str()),
            ("s3-creds", "AWS_SECRET_ACCESS_KEY")
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments
        .get("demo-scheduler")
        .await
        .expect("scheduler Deployment");
    assert_eq!(d.owner_references()[0].name, "demo");
    let spec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    // The cluster's pods admit each other, the operator and labelled clients.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let policy = policies
        .get("demo-daskrs")
        .await
        .expect("the cluster's NetworkPolicy");
    assert_eq!(policy.owner_references()[0].name, "demo");
    let policy = policy.spec.unwrap();
    let selected = policy.pod_selector.and_then(|s| s.match_labels);
    assert_eq!(
        selected,
        Some([("daskrs.dev/cluster".to_string(), "demo".to_string())].into())
    );
    let admitted: Vec<String> = policy
        .ingress
        .iter()
        .flatten()
        .flat_map(|r| r.from.iter().flatten())
        .filter_map(|f| f.pod_selector.as_ref()?.match_labels.as_ref())
        .flat_map(|l| l.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    assert_eq!(
        admitted,
        [
            "daskrs.dev/cluster=demo",
            "daskrs.dev/client=true",
            "app.kubernetes.io/name=daskrs-operator"
        ]
    );
    // The cluster's token: in a Secret of its own, which the pods read by
    // reference; nowhere in the status.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get("demo-daskrs-token")
        .await
        .expect("the cluster's token Secret");
    assert_eq!(secret.owner_references()[0].name, "demo");
    let token = String::from_utf8(secret.data.as_ref().unwrap()["token"].0.clone()).unwrap();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    let from = |pod: &Pod| {
        let var = env_of(pod, "DASKRS_TOKEN").expect("DASKRS_TOKEN");
        assert_eq!(
            var.value, None,
            "the token is never written into a pod spec"
        );
        let r = var.value_from.unwrap().secret_key_ref.unwrap();
        (r.name, r.key)
    };
    for pod in workers(&client, &ns, "demo").await {
        assert_eq!(from(&pod), ("demo-daskrs-token".into(), "token".into()));
    }
    let template = Pod {
        spec: d.spec.as_ref().unwrap().template.spec.clone(),
        ..Pod::default()
    };
    assert_eq!(
        from(&template),
        ("demo-daskrs-token".into(), "token".into())
    );
    let status = serde_json::to_string(&cluster(&client, &ns, "demo").await.status).unwrap();
    assert!(!status.contains(&token), "{status}");

    // TLS, on by default: an authority, and the certificates it issued in
    // Secrets of type kubernetes.io/tls, the pods' mounted at DASKRS_TLS_DIR.
    let ca = secrets
        .get("demo-daskrs-ca")
        .await
        .expect("the authority's Secret");
    let ca_pem = ca.data.as_ref().unwrap()["ca.crt"].0.clone();
    for name in ["demo-daskrs-tls", "demo-daskrs-client"] {
        let s = secrets.get(name).await.expect("a certificate's Secret");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(s.owner_references()[0].name, "demo");
        assert_eq!(s.data.as_ref().unwrap()["ca.crt"].0, ca_pem);
    }
    for pod in workers(&client, &ns, "demo")
        .await
        .into_iter()
        .chain([template.clone()])
    {
        let spec = pod.spec.as_ref().unwrap();
        let dir = env_of(&pod, "DASKRS_TLS_DIR")
            .and_then(|v| v.value)
            .expect("DASKRS_TLS_DIR");
        let mount = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == dir)
            .expect("the TLS files mounted");
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("demo-daskrs-tls")
        );
    }

    // A certificate with a third of its life left is issued anew, in the
    // same Secret, by the same authority; the pods stay.
    let before = secrets.get("demo-daskrs-tls").await.unwrap();
    let pods_before: BTreeSet<String> = workers(&client, &ns, "demo")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let out = plane.kubectl(&[
        "annotate",
        "--overwrite",
        "secret",
        "demo-daskrs-tls",
        "-n",
        &ns,
        &format!("daskrs.dev/not-after={soon}"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Any change to the cluster brings a pass.
    let out = plane.kubectl(&[
        "annotate",
        "--overwrite",
        "dsk",
        "demo",
        "-n",
        &ns,
        "poke=1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let renewed = wait_for(
        "the certificate to be renewed",
        Duration::from_secs(60),
        || async {
            let s = secrets.get("demo-daskrs-tls").await.ok()?;
            let not_after: u64 = s.annotations().get("daskrs.dev/not-after")?.parse().ok()?;
            (not_after > soon + 86_400).then_some(s)
        },
    )
    .await;
    let tls_crt = |s: &Secret| s.data.as_ref().unwrap()["tls.crt"].0.clone();
    assert_ne!(tls_crt(&renewed), tls_crt(&before));
    assert_eq!(renewed.data.as_ref().unwrap()["ca.crt"].0, ca_pem);
    let pods_after: BTreeSet<String> = workers(&client, &ns, "demo")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(pods_after, pods_before, "renewal restarts no pod");

    // Rotating the authority: delete its Secret. A new one is made and both
    // certificates are issued by it, in place; the pods stay.
    let out = plane.kubectl(&["delete", "secret", "demo-daskrs-ca", "-n", &ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = plane.kubectl(&[
        "annotate",
        "--overwrite",
        "dsk",
        "demo",
        "-n",
        &ns,
        "poke=2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rotated = wait_for("a new authority", Duration::from_secs(60), || async {
        let s = secrets.get_opt("demo-daskrs-ca").await.ok()??;
        let pem = s.data.as_ref()?["ca.crt"].0.clone();
        (pem != ca_pem).then_some(pem)
    })
    .await;
    wait_for(
        "both certificates issued by the new authority",
        Duration::from_secs(60),
        || async {
            let mut all = true;
            for name in ["demo-daskrs-tls", "demo-daskrs-client"] {
                let s = secrets.get(name).await.ok()?;
                all &= s.data.as_ref()?["ca.crt"].0 == rotated;
            }
            all.then_some(())
        },
    )
    .await;
    let pods_after: BTreeSet<String> = workers(&client, &ns, "demo")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(pods_after, pods_before, "rotation restarts no pod");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = services
        .get("demo-scheduler")
        .await
        .expect("scheduler Service");
    let ports: BTreeSet<i32> = svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, BTreeSet::from([8786, 8787]));
    assert_eq!(
        svc.annotations()
            .get("example.com/note")
            .map(String::as_str),
        Some("scheduler")
    );

    // No pod is ready yet: Pending, and the status says so.
    let c = wait_status(&client, &ns, "demo", "status with 3 replicas", |c| {
        c.status.as_ref().is_some_and(|s| s.replicas == 3)
    })
    .await;
    let s = c.status.unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    assert_eq!(s.ready_replicas, 0);
    assert_eq!(s.selector, "daskrs.dev/cluster=demo,daskrs.dev/role=worker");
    assert_eq!(
        s.scheduler_address,
        Some(format!("demo-scheduler.{ns}.svc:8786"))
    );
    assert_eq!(s.observed_generation, c.metadata.generation);

    // The status follows the pods.
    scheduler_ready(&client, &ns, "demo").await;
    for p in &pods {
        set_pod(&client, &ns, &p.name_any(), true).await;
    }
    let c = wait_status(&client, &ns, "demo", "phase Running", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Running))
    })
    .await;
    let s = c.status.unwrap();
    assert_eq!(s.ready_replicas, 3);
    let cond = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(cond("SchedulerReady").status, "True");
    assert_eq!(cond("WorkersReady").status, "True");
    assert_eq!(cond("WorkersReady").message, "3 of 3 workers ready");

    set_pod(&client, &ns, &pods[0].name_any(), false).await;
    let c = wait_status(&client, &ns, "demo", "2 ready", |c| {
        c.status.as_ref().is_some_and(|s| s.ready_replicas == 2)
    })
    .await;
    assert_eq!(c.status.unwrap().phase, Some(Phase::Scaling));

    // A failed worker pod is replaced.
    set_failed(&client, &ns, &pods[1].name_any()).await;
    let now = wait_for("the failed pod replaced", WAIT, || async {
        let w = workers(&client, &ns, "demo").await;
        (w.len() == 3 && !w.iter().any(|p| p.name_any() == pods[1].name_any())).then_some(w)
    })
    .await;
    assert_eq!(
        now.iter()
            .filter(|p| pods.iter().any(|o| o.name_any() == p.name_any()))
            .count(),
        2
    );
    wait_for("a WorkerFailed event", WAIT, || async {
        let out = plane.kubectl(&[
            "get",
            "events.events.k8s.io",
            "-n",
            &ns,
            "-o",
            "jsonpath={.items[*].reason}",
        ]);
        stdout(&out).contains("WorkerFailed").then_some(())
    })
    .await;

    // Deleting the cluster removes everything it owns.
    let out = plane.kubectl(&["delete", "dsk", "demo", "-n", &ns, "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("deletion to cascade", Duration::from_secs(90), || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let left = count(&pods).await?
            + count(&deployments).await?
            + count(&services).await?
            + count(&policies).await?
            + secrets
                .list(&ListParams::default().labels("daskrs.dev/cluster=demo"))
                .await
                .ok()?
                .items
                .len();
        (left == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_cert_manager_issuer_is_asked_for_the_certificates_and_they_go_with_the_cluster() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "issuer").await;
    let (_stub, url) = SchedulerStub::start().await;
    let _op = Operator::start(plane, &ns, "op", &url);
    must_apply(
        plane,
        &ns,
        r#"
apiVersion: daskrs.dev/v1alpha1
kind: DaskCluster
metadata: {name: demo}
spec:
  worker: {replicas: 1}
  tls:
    issuerRef: {name: team-ca, kind: ClusterIssuer}
"#,
    );
    let resource = daskrs_operator::builders::certificate_resource();
    let certificates: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let names = ["demo-daskrs-tls", "demo-daskrs-client"];
    let found = wait_for("the cluster's Certificates", WAIT, || async {
        let list = certificates.list(&ListParams::default()).await.ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    for c in &found {
        assert!(names.contains(&c.name_any().as_str()), "{}", c.name_any());
        assert_eq!(c.owner_references()[0].name, "demo");
        let spec = &c.data["spec"];
        assert_eq!(spec["secretName"], c.name_any().as_str());
        assert_eq!(spec["issuerRef"]["name"], "team-ca");
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(spec["dnsNames"][0], "daskrs");
    }
    // No authority of the operator's; the pods mount what cert-manager fills.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("demo-daskrs-ca").await.unwrap().is_none());
    let pods = wait_workers(&client, &ns, "demo", 1).await;
    let mounted = pods[0]
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect::<Vec<_>>();
    assert!(
        mounted.contains(&"demo-daskrs-tls".to_string()),
        "{mounted:?}"
    );

    // What cert-manager's CA issuer writes: its certificate in ca.crt, the
    // issued one beside it, the Certificate's name in an annotation, the
    // Certificate's secretTemplate labels.
    let ca = daskrs_core::certs::Authority::generate("team-ca").unwrap();
    for name in names {
        let issued = ca.issue("test", &[], 90).unwrap();
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": {"daskrs.dev/cluster": "demo"},
                "annotations": {
                    "cert-manager.io/certificate-name": name,
                    "cert-manager.io/issuer-name": "team-ca",
                },
            },
            "type": "kubernetes.io/tls",
            "stringData": {
                "ca.crt": ca.cert_pem,
                "tls.crt": issued.cert_pem,
                "tls.key": issued.key_pem,
            },
        }))
        .unwrap();
        secrets
            .create(&kube::api::PostParams::default(), &secret)
            .await
            .expect("the issued Secret");
    }
    // The operator makes them the cluster's, leaving what cert-manager wrote.
    wait_for("the issued Secrets to be the cluster's", WAIT, || async {
        let mut all = true;
        for name in names {
            let s = secrets.get(name).await.ok()?;
            all &= s.owner_references().iter().any(|o| o.name == "demo");
            assert_eq!(
                s.data.as_ref()?["ca.crt"].0,
                ca.cert_pem.as_bytes(),
                "the issuer's certificate stays"
            );
        }
        all.then_some(())
    })
    .await;
    assert!(secrets.get_opt("demo-daskrs-ca").await.unwrap().is_none());

    // Without the issuer, the operator's own authority issues into the same
    // Secrets, and the Certificates go (they would issue over it).
    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: demo}\nspec:\n  worker: {replicas: 1}\n",
    );
    wait_for("the operator's own certificates", WAIT, || async {
        let ours = secrets.get_opt("demo-daskrs-ca").await.ok()??;
        let ca_pem = ours.data?["ca.crt"].0.clone();
        let mut all = count(&certificates).await? == 0;
        for name in names {
            let s = secrets.get(name).await.ok()?;
            all &= s.data.as_ref()?["ca.crt"].0 == ca_pem
                && !s
                    .annotations()
                    .contains_key("cert-manager.io/certificate-name");
        }
        all.then_some(())
    })
    .await;

    // Deleting the cluster takes its Certificates and their Secrets along.
    let out = plane.kubectl(&["delete", "dsk", "demo", "-n", &ns, "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("deletion to cascade", Duration::from_secs(90), || async {
        let left = count(&certificates).await?
            + secrets
                .list(&ListParams::default().labels("daskrs.dev/cluster=demo"))
                .await
                .ok()?
                .items
                .len();
        (left == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_scale_adds_workers_and_retires_through_the_scheduler() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "scale").await;
    let (stub, url) = SchedulerStub::start().await;
    // This operator holds only the role in operator/rbac/clusterrole.yaml.
    let kubeconfig = harness::operator_kubeconfig(plane, &ns);
    let op = Operator::start_with(plane, &kubeconfig, &ns, "op", &url);

    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: demo}\nspec:\n  worker: {replicas: 2}\n",
    );
    wait_workers(&client, &ns, "demo", 2).await;
    let out = plane.kubectl(&["scale", "dsk", "demo", "-n", &ns, "--replicas", "5"]);
    assert!(out.status.success(), "kubectl scale: {}", stderr(&out));
    let pods = wait_workers(&client, &ns, "demo", 5).await;
    scheduler_ready(&client, &ns, "demo").await;

    // Four workers run; the scheduler would close [3], then [1], then ...
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    for n in &names[..4] {
        set_pod(&client, &ns, n, true).await;
    }
    stub.state.lock().unwrap().workers = vec![
        names[3].clone(),
        names[1].clone(),
        names[0].clone(),
        names[2].clone(),
    ];
    wait_status(&client, &ns, "demo", "4 ready", |c| {
        c.status.as_ref().is_some_and(|s| s.ready_replicas == 4)
    })
    .await;

    let out = plane.kubectl(&["scale", "dsk", "demo", "-n", &ns, "--replicas", "2"]);
    assert!(out.status.success(), "kubectl scale: {}", stderr(&out));
    let left = wait_workers(&client, &ns, "demo", 2).await;
    // The pod that was not ready went first, then the two the scheduler chose.
    let left: Vec<String> = left.iter().map(|p| p.name_any()).collect();
    assert_eq!(left, vec![names[0].clone(), names[2].clone()]);
    assert_eq!(stub.state.lock().unwrap().retire_calls, vec![(vec![], 2)]);
    // With the cluster's token, from its Secret.
    let secret: Secret = Api::namespaced(client.clone(), &ns)
        .get("demo-daskrs-token")
        .await
        .expect("the cluster's token Secret");
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    assert_eq!(stub.state.lock().unwrap().retire_tokens, vec![Some(token)]);
    let c = wait_status(&client, &ns, "demo", "status 2 replicas", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.replicas == 2 && s.phase == Some(Phase::Running))
    })
    .await;
    assert_eq!(c.status.unwrap().ready_replicas, 2);

    // The scale subresource reads the status and the selector.
    let out = plane.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/daskrs.dev/v1alpha1/namespaces/{ns}/daskclusters/demo/scale"),
    ]);
    let scale: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("scale JSON");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["replicas"], 2);
    assert_eq!(
        scale["status"]["selector"],
        "daskrs.dev/cluster=demo,daskrs.dev/role=worker"
    );
    assert_eq!(op.metric("daskrs_operator_leader").await, Some(1.0));
    let log = op.log();
    assert!(
        !log.contains("forbidden"),
        "the operator's role lacks a permission:\n{log}"
    );

    // Each scaling step has its own Event, with its own numbers.
    wait_for("an Event for each scale-up", WAIT, || async {
        let out = plane.kubectl(&[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            &ns,
            "--field-selector",
            "reason=ScalingUp",
            "-o",
            "jsonpath={.items[*].note}",
        ]);
        let notes = stdout(&out);
        (notes.contains("(target 2)") && notes.contains("(target 5)")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_edits_roll_out_new_pods_before_retiring_old_ones() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "roll").await;
    let (stub, url) = SchedulerStub::start().await;
    let _op = Operator::start(plane, &ns, "op", &url);
    let manifest = |v: &str| {
        format!(
            "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {{name: demo}}\nspec:\n  worker:\n    replicas: 2\n    env: [{{name: VERSION, value: \"{v}\"}}]\n"
        )
    };
    must_apply(plane, &ns, &manifest("1"));
    let old = wait_workers(&client, &ns, "demo", 2).await;
    scheduler_ready(&client, &ns, "demo").await;
    for p in &old {
        set_pod(&client, &ns, &p.name_any(), true).await;
    }
    wait_status(&client, &ns, "demo", "Running", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Running))
    })
    .await;

    must_apply(plane, &ns, &manifest("2"));
    // New pods come first; the old ones stay while the new are not ready.
    let all = wait_workers(&client, &ns, "demo", 4).await;
    let fresh: Vec<Pod> = all
        .into_iter()
        .filter(|p| env_of(p, "VERSION").and_then(|e| e.value).as_deref() == Some("2"))
        .collect();
    assert_eq!(fresh.len(), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        workers(&client, &ns, "demo").await.len(),
        4,
        "old pods removed before the new were ready"
    );
    for p in &fresh {
        set_pod(&client, &ns, &p.name_any(), true).await;
    }
    let now = wait_workers(&client, &ns, "demo", 2).await;
    let names = |v: &[Pod]| v.iter().map(|p| p.name_any()).collect::<BTreeSet<_>>();
    assert_eq!(names(&now), names(&fresh));
    let calls = stub.state.lock().unwrap().retire_calls.clone();
    let retired: BTreeSet<String> = calls.into_iter().flat_map(|(named, _)| named).collect();
    assert_eq!(
        retired,
        names(&old),
        "the old workers were retired through the scheduler"
    );
    wait_status(&client, &ns, "demo", "Running after the rollout", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Running) && s.replicas == 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_killed_mid_reconcile_converges_after_restart() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "restart").await;
    let (_stub, url) = SchedulerStub::start().await;
    let mut first = Operator::start(plane, &ns, "first", &url);
    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: demo}\nspec:\n  worker: {replicas: 150}\n",
    );
    wait_for("the first pods", WAIT, || async {
        let n = workers(&client, &ns, "demo").await.len();
        (n > 0).then_some(())
    })
    .await;
    first.kill();
    let made = workers(&client, &ns, "demo").await.len();
    eprintln!("the first operator made {made} of 150 pods before it was killed");
    let _second = Operator::start(plane, &ns, "second", &url);
    wait_workers(&client, &ns, "demo", 150).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        workers(&client, &ns, "demo").await.len(),
        150,
        "more pods than replicas after a restart (first made {made})"
    );
    wait_status(&client, &ns, "demo", "status 150 replicas", |c| {
        c.status.as_ref().is_some_and(|s| s.replicas == 150)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_acts() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "lease").await;
    let (_stub, url) = SchedulerStub::start().await;
    let mut a = Operator::start(plane, &ns, "a", &url);
    wait_for("a to lead", WAIT, || async {
        (a.metric("daskrs_operator_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let b = Operator::start(plane, &ns, "b", &url);
    wait_for("b to serve metrics", WAIT, || async {
        b.metric("daskrs_operator_leader").await
    })
    .await;

    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: demo}\nspec:\n  worker: {replicas: 2}\n",
    );
    wait_workers(&client, &ns, "demo", 2).await;
    assert_eq!(b.metric("daskrs_operator_leader").await, Some(0.0));
    assert_eq!(
        b.metric("daskrs_operator_reconciles_total").await,
        Some(0.0),
        "the follower reconciled"
    );
    assert!(
        a.metric("daskrs_operator_reconciles_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );

    // The leader stops and hands the lease over; the follower takes over.
    let status = a.terminate().expect("a exits");
    assert!(status.success(), "a exited with {status}: {}", a.log());
    wait_for("b to lead", Duration::from_secs(30), || async {
        (b.metric("daskrs_operator_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let out = plane.kubectl(&["scale", "dsk", "demo", "-n", &ns, "--replicas", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_workers(&client, &ns, "demo", 3).await;
    assert!(
        b.metric("daskrs_operator_reconciles_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn autoscaling_follows_the_scheduler_and_idle_clusters_scale_to_zero() {
    let plane = control_plane();
    let client = plane.client().await;
    let ns = harness::namespace(&client, "adapt").await;
    let (stub, url) = SchedulerStub::start().await;
    let _op = Operator::start(plane, &ns, "op", &url);
    stub.state.lock().unwrap().desired_workers = 3;
    stub.state.lock().unwrap().tasks_waiting = 10;
    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: auto}\nspec:\n  worker: {replicas: 1}\n  autoscaling: {minReplicas: 1, maxReplicas: 4}\n",
    );
    // The scheduler must be up before the operator asks it.
    scheduler_ready(&client, &ns, "auto").await;
    wait_workers(&client, &ns, "auto", 3).await;
    stub.state.lock().unwrap().desired_workers = 40;
    wait_workers(&client, &ns, "auto", 4).await;
    {
        let mut s = stub.state.lock().unwrap();
        s.desired_workers = 0;
        s.tasks_waiting = 0;
    }
    wait_workers(&client, &ns, "auto", 1).await;

    must_apply(
        plane,
        &ns,
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: idle}\nspec:\n  worker: {replicas: 2}\n  idleTimeout: 30s\n",
    );
    wait_workers(&client, &ns, "idle", 2).await;
    scheduler_ready(&client, &ns, "idle").await;
    stub.state.lock().unwrap().idle_seconds = 31.0;
    wait_workers(&client, &ns, "idle", 0).await;
    {
        let mut s = stub.state.lock().unwrap();
        s.idle_seconds = 0.0;
        s.tasks_waiting = 5;
    }
    wait_workers(&client, &ns, "idle", 2).await;
}
