//! The chart as a user installs it (`helm install`), and its operator run
//! on this machine with the arguments and the ServiceAccount its Deployment
//! gives it: what the end-to-end tests share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::kube::{ControlPlane, Process, repo, stderr, stdout, wait_for};
use super::net::http_get;
use super::node::{NodeAgent, NodeConfig, tail};
use super::pod_env::Image;
use super::s3::{ACCESS_KEY, SECRET_KEY};

/// The operator's namespace and the chart's release name.
pub const OPS: &str = "daskrs-system";
pub const RELEASE: &str = "daskrs";

/// The operator binary of this workspace, next to the `daskrs` binary.
pub fn operator_binary() -> PathBuf {
    let bin = Path::new(super::BIN)
        .parent()
        .expect("the daskrs binary's directory")
        .join("daskrs-operator");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p daskrs-operator` first",
        bin.display()
    );
    bin
}

/// `helm install` of `charts/daskrs` watching `namespace`, once its CRD is
/// established: the operator Deployment's arguments.
pub fn helm_install(plane: &ControlPlane, namespace: &str) -> Vec<String> {
    let out = plane.helm(&[
        "install",
        RELEASE,
        "charts/daskrs",
        "--namespace",
        OPS,
        "--create-namespace",
        "--set",
        &format!("watchNamespaces={{{namespace}}}"),
    ]);
    assert!(out.status.success(), "helm install: {}", stderr(&out));
    plane.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/daskclusters.daskrs.dev",
        "--timeout=60s",
    ]);
    let deploy: serde_json::Value = serde_json::from_str(&plane.kubectl_ok(&[
        "get",
        "deployment",
        RELEASE,
        "-n",
        OPS,
        "-o",
        "json",
    ]))
    .expect("Deployment JSON");
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the operator's args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

/// The images the operator's pods name, as the test node runs them: the
/// workspace's daskrs binary for the runtime image (the scheduler's), and
/// for the python-worker image (the workers') with `python`, which has the
/// daskrs package installed.
pub fn chart_images(args: &[String], python: &Path) -> Vec<Image> {
    let repository = |flag: &str| {
        let image = args
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .unwrap_or_else(|| panic!("{flag} in the Deployment's args: {args:?}"));
        image.rsplit_once(':').map_or(image, |(r, _)| r).to_string()
    };
    vec![
        Image::daskrs(&repository("--default-image"), Path::new(super::BIN)),
        Image::python(&repository("--worker-image"), Path::new(super::BIN), python),
    ]
}

/// The test node of `plane` (`node-1`, its directories under the plane's),
/// running the pods of `namespace` with `images`.
pub async fn start_node(
    plane: &ControlPlane,
    client: &kube::Client,
    namespace: &str,
    images: Vec<Image>,
) -> NodeAgent {
    NodeAgent::start(
        client.clone(),
        NodeConfig {
            name: "node-1".into(),
            namespace: namespace.into(),
            dir: plane.dir.join("node"),
            images,
        },
    )
    .await
}

/// Starts the operator with the Deployment's `args` and its
/// ServiceAccount's credentials, and waits until it leads.
pub async fn start_operator(
    plane: &ControlPlane,
    agent: &NodeAgent,
    args: Vec<String>,
    wait: Duration,
) -> Process {
    // On this machine the operator listens on a loopback address of its own,
    // at the chart's port; every other argument is the Deployment's.
    let metrics = SocketAddr::from((agent.allocate_address(), 8080));
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            if a.starts_with("--metrics-addr=") {
                format!("--metrics-addr={metrics}")
            } else {
                a
            }
        })
        .collect();
    let token = plane.kubectl_ok(&["create", "token", RELEASE, "-n", OPS, "--duration=2h"]);
    let kubeconfig = plane.kubeconfig_with_token("operator", &token);
    let proxy = format!("http://{}", agent.http_proxy());
    let mut cmd = Command::new(operator_binary());
    // The pod's environment: POD_NAME from its fieldRef, and the
    // credentials of its ServiceAccount. The scheduler URL of the chart
    // names the Service (`http://demo-scheduler.analytics.svc:8787`); from
    // outside the cluster that name resolves through the node's proxy, the
    // stand-in for cluster DNS.
    cmd.args(&args)
        .env_clear()
        .env("POD_NAME", format!("{RELEASE}-local"))
        .env("KUBECONFIG", &kubeconfig)
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy);
    let operator = Process::start(cmd, plane.dir.join("operator.log"));
    let diag = || format!("=== operator log\n{}", tail(&operator.log(), 60));
    wait_for("the operator to lead", wait, &diag, || async {
        if let Some(status) = operator.exited() {
            panic!("the operator exited ({status}):\n{}", operator.log());
        }
        let (_, body) = http_get(metrics, "/metrics", Duration::from_secs(2)).await?;
        body.lines()
            .any(|l| l.starts_with("daskrs_operator_leader ") && l.ends_with(" 1"))
            .then_some(())
    })
    .await;
    operator
}

/// Some once `namespace` holds no pod and the test node runs no process:
/// what deleting every cluster there leaves.
pub async fn nothing_left_running(
    client: &kube::Client,
    agent: &NodeAgent,
    namespace: &str,
) -> Option<()> {
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default())
        .await
        .ok()?;
    let running = agent.processes().is_empty() && agent.processes_in_pods().is_empty();
    (pods.items.is_empty() && running).then_some(())
}

/// The Secret `s3-credentials` in `namespace`, with the keys of the tests'
/// MinIO server under the names the AWS SDKs read, as a DaskCluster's
/// `s3.credentialsSecret` names it.
pub fn s3_credentials(plane: &ControlPlane, namespace: &str) {
    plane.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "s3-credentials",
        "-n",
        namespace,
        &format!("--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}"),
        &format!("--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}"),
    ]);
}

/// `python client/tests/kube/SCRIPT ARGS...` as a notebook user on a
/// laptop runs it: with `kubeconfig`, the namespace in `E2E_NAMESPACE`, and
/// nothing that says it runs in a pod or holds another cluster's keys.
pub fn user_python(
    python: &Path,
    script: &str,
    args: &[&str],
    kubeconfig: &Path,
    namespace: &str,
) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("client/tests/kube").join(script))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("E2E_NAMESPACE", namespace)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("DASKRS_TOKEN")
        .env_remove("DASKRS_TLS_DIR");
    cmd
}

/// What `what` printed, once it has succeeded; otherwise a panic with its
/// output and what `diagnose` tells about the state.
pub fn succeeded(what: &str, out: &Output, diagnose: &dyn Fn() -> String) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}\n{}",
        out.status,
        stdout(out),
        stderr(out),
        diagnose()
    );
    stdout(out)
}

/// What to read when a wait fails: the namespace's objects and events, the
/// operator's and the pods' logs, the node's processes and the control
/// plane's logs.
pub fn diagnostics(
    plane: &ControlPlane,
    agent: &NodeAgent,
    operator: Option<&Process>,
    namespace: &str,
) -> String {
    let get = plane.kubectl(&[
        "get",
        "daskclusters,deployments,replicasets,pods,services",
        "-n",
        namespace,
        "-o",
        "wide",
    ]);
    let events = plane.kubectl(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"]);
    let operator = operator.map_or_else(
        || "(not started)\n".to_string(),
        |p| {
            let exited = p
                .exited()
                .map(|s| format!(" (exited: {s})"))
                .unwrap_or_default();
            format!("{exited}\n{}", tail(&p.log(), 60))
        },
    );
    format!(
        "=== kubectl get\n{}{}\n=== events\n{}\n=== operator log{}\n=== pod logs\n{}\n=== pod processes: {:?}\n=== control plane\n{}",
        stdout(&get),
        stderr(&get),
        tail(&stdout(&events), 40),
        operator,
        agent.logs("", 15),
        agent.processes(),
        plane.logs(10),
    )
}
