//! A benchmark, not a test (ignored unless asked for; `bench/kube.sh` runs
//! it): how long `daskrs.KubeCluster(n_workers=N)` takes to give a notebook
//! a client whose cluster has all N workers, and `close()` to leave nothing,
//! on a real control plane with the chart installed and the test node
//! running the pods. `DASKRS_BENCH_SIZES` (default `1,10,100`) lists the
//! sizes.
//!
//! With `DASK_KUBERNETES_PYTHON` (a venv with dask-kubernetes,
//! `bench/install-dask-kubernetes.sh`), the reference follows on the same
//! API server and node: dask-kubernetes' own `KubeCluster` with its
//! operator, the daskrs operator stopped first so that each system runs
//! alone.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::dask_kubernetes;
use harness::install::{
    chart_images, diagnostics, helm_install, operator_binary, start_node, start_operator,
    succeeded, user_python,
};
use harness::kube::{ControlPlane, require_tools};
use harness::pod_env::test_python;

const NS: &str = "bench";
const WAIT: Duration = Duration::from_secs(180);

/// One run of `bench.py SYSTEM N`: its JSON line; on failure, what
/// `diagnose` tells about the state.
fn run(
    python: &Path,
    kubeconfig: &Path,
    system: &str,
    n: usize,
    diagnose: &dyn Fn() -> String,
) -> serde_json::Value {
    let size = n.to_string();
    let out = user_python(python, "bench.py", &[system, &size], kubeconfig, NS)
        .output()
        .expect("run bench.py");
    let text = succeeded(&format!("bench.py {system} {n}"), &out, diagnose);
    let line = text.lines().last().expect("a line of JSON");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The runs of `system`: once untimed, then once per size. The untimed one
/// is for kube-controller-manager's garbage collector, which learns a new
/// resource type (the owner of the cluster's objects) at its next discovery
/// pass, every 30 s: until then the first deleted cluster's pods wait for it.
fn runs(
    python: &Path,
    kubeconfig: &Path,
    system: &str,
    sizes: &[usize],
    diagnose: &dyn Fn() -> String,
) -> Vec<serde_json::Value> {
    run(python, kubeconfig, system, 1, diagnose);
    sizes
        .iter()
        .map(|&n| {
            let r = run(python, kubeconfig, system, n, diagnose);
            eprintln!("{r}");
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: bench/kube.sh runs it"]
async fn kube_cluster_start_and_close_times() {
    require_tools();
    operator_binary();
    let python = test_python();
    let dask_python = dask_kubernetes::python();
    let sizes: Vec<usize> = std::env::var("DASKRS_BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .map(|s| s.trim().parse().expect("DASKRS_BENCH_SIZES: numbers"))
        .collect();

    let plane = ControlPlane::start_e2e();
    let client = plane.client().await;
    plane.kubectl_ok(&["create", "namespace", NS]);
    let args = helm_install(&plane, NS);
    let mut images = chart_images(&args, &python);
    if let Some(p) = &dask_python {
        dask_kubernetes::install_crds(&plane, p);
        images.push(dask_kubernetes::image(p));
    }
    let agent = start_node(&plane, &client, NS, images).await;

    let operator = start_operator(&plane, &agent, args, WAIT).await;
    let diagnose = || diagnostics(&plane, &agent, Some(&operator), NS);
    let mut rows = runs(&python, &plane.kubeconfig, "daskrs", &sizes, &diagnose);
    drop(operator);
    if let Some(p) = &dask_python {
        let operator = dask_kubernetes::start_operator(&plane, &agent, p, NS, WAIT).await;
        let diagnose = || dask_kubernetes::diagnostics(&plane, &agent, &operator, NS);
        rows.extend(runs(
            p,
            &plane.kubeconfig,
            "dask-kubernetes",
            &sizes,
            &diagnose,
        ));
    }

    rows.sort_by_key(|r| r["workers"].as_u64());
    println!(
        "\nKubeCluster(n_workers=N) to a client with N workers, and close() to nothing left (seconds)"
    );
    println!(
        "{:<18} {:>8} {:>10} {:>10}",
        "system", "workers", "ready", "close"
    );
    for r in &rows {
        println!(
            "{:<18} {:>8} {:>10.2} {:>10.2}",
            r["system"].as_str().unwrap_or("?"),
            r["workers"].as_u64().unwrap_or(0),
            r["ready_s"].as_f64().unwrap_or(f64::NAN),
            r["close_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let stuck: u64 = rows.iter().filter_map(|r| r["stuck_starts"].as_u64()).sum();
    if stuck > 0 {
        println!(
            "dask-kubernetes: {stuck} start(s) left Pending by its operator (dask/dask-kubernetes#968), \
             deleted after KubeCluster's 60 s and started again, untimed"
        );
    }
}
