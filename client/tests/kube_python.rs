//! The notebook user's path on Kubernetes, from Python, on a real control
//! plane with the real `helm`: the chart installed, then
//! `daskrs.KubeCluster(...)` creates a cluster, forwards the scheduler's
//! ports through the API server and reads the cluster's token and client
//! certificate, `Client(cluster)` runs a `dask.array` reduction, a
//! `dask.dataframe` groupby over Parquet in S3 (a MinIO server) and a
//! `client.sql` query, the cluster scales 2 -> 3 -> 1 with persisted
//! results surviving, and `close()` leaves no pod, Service, Secret or
//! process (`client/tests/kube/notebook.py` is the notebook).
//!
//! Before that, `KubeCluster` is refused with the error that names the
//! cause: no CRD installed, no operator running, a user without rights, an
//! image that cannot be pulled.
//!
//! The test node (`harness::node`) runs the pods, and serves the kubelet's
//! port-forward and log endpoints the API server proxies to
//! (`harness::kubelet`); the workers' Python is `DASKRS_TEST_PYTHON`, with
//! the daskrs package of this checkout (scripts/test.sh installs it).

mod harness;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use harness::install::{
    chart_images, diagnostics, helm_install, nothing_left_running, operator_binary, s3_credentials,
    start_node, start_operator, succeeded, user_python,
};
use harness::kube::{ControlPlane, require_tools, stderr, stdout, wait_for};
use harness::pod_env::test_python;
use harness::s3::{ACCESS_KEY, Minio, SECRET_KEY};

const NS: &str = "notebooks";
const WAIT: Duration = Duration::from_secs(180);
const DATA_URL: &str = "s3://tpch/sf0.01";

/// Runs `notebook.py MODE` as the user, with `kubeconfig`.
fn notebook(python: &Path, kubeconfig: &Path, minio: &Minio, mode: &str) -> Output {
    user_python(python, "notebook.py", &[mode], kubeconfig, NS)
        .env("E2E_S3_ENDPOINT", &minio.endpoint)
        .env("E2E_S3_KEY", ACCESS_KEY)
        .env("E2E_S3_SECRET", SECRET_KEY)
        .env("E2E_DATA_URL", DATA_URL)
        .output()
        .expect("run notebook.py")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notebook_creates_uses_scales_and_closes_a_cluster_from_python() {
    require_tools();
    operator_binary();
    let python = test_python();
    let started = std::time::Instant::now();
    let step = |what: &str| {
        eprintln!(
            "kube_python: {:6.1}s {what}",
            started.elapsed().as_secs_f64()
        )
    };

    // TPC-H data in S3: the notebook reads lineitem's Parquet files.
    let minio = Minio::start();
    let data = tempfile::tempdir().expect("temporary directory");
    minio.put_tpch(DATA_URL, &data.path().join("tpch")).await;

    let plane = ControlPlane::start_e2e();
    let client = plane.client().await;
    plane.kubectl_ok(&["create", "namespace", NS]);
    let check = |mode: &str, kubeconfig: &Path, diag: &dyn Fn() -> String| {
        let out = notebook(&python, kubeconfig, &minio, mode);
        eprint!("{}", succeeded(&format!("notebook.py {mode}"), &out, diag));
    };
    let no_diag = || String::new();

    check("no-crd", &plane.kubeconfig, &no_diag);
    step("refused: no CRD");

    let args = helm_install(&plane, NS);
    let agent = start_node(&plane, &client, NS, chart_images(&args, &python)).await;
    let early = || diagnostics(&plane, &agent, None, NS);
    check("no-operator", &plane.kubeconfig, &early);
    step("refused: no operator");

    // A user who may do nothing in the namespace.
    plane.kubectl_ok(&["create", "serviceaccount", "nobody", "-n", NS]);
    let token = plane.kubectl_ok(&["create", "token", "nobody", "-n", NS, "--duration=1h"]);
    let nobody = plane.kubeconfig_with_token("nobody", token.trim());
    check("forbidden", &nobody, &early);
    step("refused: forbidden");

    let operator = start_operator(&plane, &agent, args, WAIT).await;
    let diag = || diagnostics(&plane, &agent, Some(&operator), NS);
    s3_credentials(&plane, NS);
    check("bad-image", &plane.kubeconfig, &diag);
    step("refused: an image that cannot be pulled");

    check("notebook", &plane.kubeconfig, &diag);
    step("the notebook ran");

    // The example notebook, as a user runs it: the kubeconfig's context
    // names the namespace.
    let user = plane.dir.join("kubeconfig-notebooks");
    std::fs::copy(&plane.kubeconfig, &user).expect("copy the kubeconfig");
    let out = Command::new(harness::kube::bin_dir().join("kubectl"))
        .args(["config", "set-context", "--current", "--namespace", NS])
        .env("KUBECONFIG", &user)
        .output()
        .expect("kubectl config set-context");
    assert!(out.status.success(), "{}", stderr(&out));
    check("example", &user, &diag);
    step("examples/kubernetes.ipynb ran");

    // `close()` waited for the cluster to go; nothing of it is left: no
    // pod, no process, no Deployment, Service or Secret.
    wait_for("no pods and no processes left", WAIT, &diag, || {
        nothing_left_running(&client, &agent, NS)
    })
    .await;
    let left = plane.kubectl_ok(&[
        "get",
        "daskclusters,deployments,services,networkpolicies",
        "-n",
        NS,
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "", "left behind by the closed clusters");
    wait_for("the clusters' Secrets to go", WAIT, &diag, || async {
        let out = plane.kubectl(&["get", "secrets", "-n", NS, "-o", "name"]);
        let names = stdout(&out);
        let left: Vec<&str> = names
            .lines()
            .filter(|n| *n != "secret/s3-credentials")
            .collect();
        (out.status.success() && left.is_empty()).then_some(())
    })
    .await;
    step("nothing left");
}
