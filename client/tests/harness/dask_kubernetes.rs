//! The reference on the same control plane: dask-kubernetes' operator and
//! its CRDs, from a venv with the pinned release
//! (`bench/install-dask-kubernetes.sh` makes it; `DASK_KUBERNETES_PYTHON`
//! names its interpreter), the operator run on this machine as its chart's
//! Deployment runs it, and the test node running its pods with that venv's
//! `distributed` (`Image::dask`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::install;
use super::kube::{ControlPlane, Process, stderr, stdout, wait_for};
use super::net::http_get;
use super::node::{NodeAgent, tail};
use super::pod_env::Image;

/// The image KubeCluster's pods name (any tag).
pub const IMAGE: &str = "ghcr.io/dask/dask";

/// `$DASK_KUBERNETES_PYTHON`, absolute (a venv's interpreter is a symbolic
/// link that must not be resolved), or None when it is unset.
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("DASK_KUBERNETES_PYTHON").filter(|p| !p.is_empty())?;
    let p = std::path::absolute(&p)
        .unwrap_or_else(|e| panic!("DASK_KUBERNETES_PYTHON={}: {e}", Path::new(&p).display()));
    let out = Command::new(&p)
        .args(["-c", "import dask_kubernetes.operator"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", p.display()));
    assert!(
        out.status.success(),
        "{} cannot import dask_kubernetes.operator (bench/install-dask-kubernetes.sh installs it):\n{}",
        p.display(),
        stderr(&out)
    );
    Some(p)
}

/// The image the test node runs Dask's pods with.
pub fn image(python: &Path) -> Image {
    Image::dask(IMAGE, python)
}

/// Applies the CRDs the package ships (those of its Helm chart) and waits
/// until they are established.
pub fn install_crds(plane: &ControlPlane, python: &Path) {
    let out = Command::new(python)
        .args([
            "-c",
            "import dask_kubernetes, os; print(os.path.join(os.path.dirname(dask_kubernetes.__file__), \
             'operator/deployment/helm/dask-kubernetes-operator/crds'))",
        ])
        .output()
        .expect("run python");
    let dir = install::succeeded("the CRDs of dask-kubernetes", &out, &String::new)
        .trim()
        .to_string();
    plane.kubectl_ok(&["apply", "--server-side", "-f", &dir]);
    for crd in [
        "daskclusters",
        "daskworkergroups",
        "daskjobs",
        "daskautoscalers",
    ] {
        plane.wait_established(&format!("{crd}.kubernetes.dask.org"));
    }
}

/// Starts the operator as its chart's Deployment does (`kopf run -m
/// dask_kubernetes.operator.controller --liveness=...`), watching only
/// `namespace` as the daskrs chart's operator does here, standalone (the
/// chart installs no kopf peering objects), with the admin kubeconfig; waits
/// until its liveness endpoint answers.
///
/// It gets no proxy for Service names: creating and deleting a cluster
/// never reaches the scheduler, and where it does (scaling down, idle
/// shutdown) it resolves `name.namespace` in-process and, failing that,
/// port-forwards through the API server, with an aiohttp session that
/// ignores `HTTP_PROXY`.
pub async fn start_operator(
    plane: &ControlPlane,
    agent: &NodeAgent,
    python: &Path,
    namespace: &str,
    wait: Duration,
) -> Process {
    let liveness = SocketAddr::from((agent.allocate_address(), 8080));
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "kopf",
        "run",
        "-m",
        "dask_kubernetes.operator.controller",
        &format!("--liveness=http://{liveness}/healthz"),
        "--standalone",
        &format!("--namespace={namespace}"),
    ])
    .env("KUBECONFIG", &plane.kubeconfig)
    .env_remove("KUBERNETES_SERVICE_HOST");
    let operator = Process::start(cmd, plane.dir.join("dask-kubernetes-operator.log"));
    let diag = || {
        format!(
            "=== dask-kubernetes operator log\n{}",
            tail(&operator.log(), 60)
        )
    };
    wait_for("the dask-kubernetes operator", wait, &diag, || async {
        if let Some(status) = operator.exited() {
            panic!(
                "the dask-kubernetes operator exited ({status}):\n{}",
                operator.log()
            );
        }
        let (code, body) = http_get(liveness, "/healthz", Duration::from_secs(2)).await?;
        (code == 200 && body.contains("now")).then_some(())
    })
    .await;
    operator
}

/// What to read when a run fails: the Dask resources, the operator's log
/// without its lines for each API request, then what `install::diagnostics`
/// shows.
pub fn diagnostics(
    plane: &ControlPlane,
    agent: &NodeAgent,
    operator: &Process,
    namespace: &str,
) -> String {
    let get = plane.kubectl(&[
        "get",
        "daskclusters.kubernetes.dask.org,daskworkergroups.kubernetes.dask.org",
        "-n",
        namespace,
        "-o",
        "yaml",
    ]);
    let log: String = operator
        .log()
        .lines()
        .filter(|l| !l.contains("] httpx "))
        .map(|l| format!("{l}\n"))
        .collect();
    let exited = operator
        .exited()
        .map(|s| format!(" (exited: {s})"))
        .unwrap_or_default();
    format!(
        "=== Dask resources\n{}{}\n=== dask-kubernetes operator log{exited}\n{}\n{}",
        stdout(&get),
        stderr(&get),
        tail(&log, 80),
        install::diagnostics(plane, agent, None, namespace)
    )
}
