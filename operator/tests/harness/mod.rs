//! A real control plane for the operator's tests: etcd, kube-apiserver and
//! kube-controller-manager started by `scripts/kube-up.sh` (binaries from
//! `scripts/install-kube.sh`), the real `kubectl`, and the operator binary
//! run as its own process.
//!
//! One control plane serves all tests of a test binary; each test works in a
//! namespace of its own that enforces the `restricted` Pod Security
//! Standard. The control plane stops when the test process exits.

#![allow(dead_code)]

#[path = "../../../tests/support/control_plane.rs"]
mod control_plane;
#[allow(unused_imports)] // each test binary uses a part
pub use control_plane::{ControlPlane, bin_dir, repo, stderr, stdout};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

static PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The shared control plane, started on first use, with the CRD installed.
pub fn control_plane() -> &'static ControlPlane {
    PLANE.get_or_init(|| {
        let bin = bin_dir();
        assert!(
            bin.join("kube-apiserver").exists(),
            "no kube-apiserver in {}: run scripts/install-kube.sh",
            bin.display()
        );
        let plane = ControlPlane::start(
            std::env::temp_dir().join(format!("daskrs-kube-{}", std::process::id())),
        );
        // Ours, and cert-manager's Certificate (for clusters that name an
        // issuer), from scripts/install-kube.sh.
        let cert_manager = bin.join("cert-manager.io_certificates.yaml");
        assert!(
            cert_manager.exists(),
            "no {}: run scripts/install-kube.sh",
            cert_manager.display()
        );
        let crds = [
            (
                "crds/daskcluster.yaml".to_string(),
                "daskclusters.daskrs.dev",
            ),
            (
                cert_manager.display().to_string(),
                "certificates.cert-manager.io",
            ),
        ];
        for (file, name) in &crds {
            let applied = plane.kubectl(&["apply", "--server-side", "-f", file]);
            assert!(
                applied.status.success(),
                "CRD {name} not applied: {}",
                stderr(&applied)
            );
            plane.wait_established(name);
        }
        plane
    })
}

/// A fresh namespace that enforces the `restricted` Pod Security Standard,
/// so every pod the operator makes is checked against it by the API server.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed));
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                "pod-security.kubernetes.io/enforce".to_string(),
                "restricted".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Polls `check` every 100 ms until it returns Some, or fails the test
/// after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where an operator of this test process serves its metrics: a loopback
/// address of its own at the chart's port, as a pod would have. Nothing
/// else binds these addresses (the test node's pods have 127.100-199.*), so
/// no port is picked and given up.
pub fn metrics_address() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(n < 254 * 254, "out of loopback addresses for operators");
    let ip = std::net::Ipv4Addr::new(127, 201, (n / 254) as u8, (n % 254 + 1) as u8);
    SocketAddr::from((ip, 8080))
}

/// The operator binary as its own process, watching one namespace.
pub struct Operator {
    child: Option<Child>,
    pub metrics: SocketAddr,
    pub identity: String,
    log: PathBuf,
}

impl Operator {
    pub fn start(
        plane: &ControlPlane,
        namespace: &str,
        identity: &str,
        scheduler_url: &str,
    ) -> Self {
        Self::start_with(plane, &plane.kubeconfig, namespace, identity, scheduler_url)
    }

    /// Runs the operator with the credentials of `kubeconfig`.
    pub fn start_with(
        plane: &ControlPlane,
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        scheduler_url: &str,
    ) -> Self {
        let metrics = metrics_address();
        let args = [
            "--namespace",
            namespace,
            "--lease-namespace",
            namespace,
            "--metrics-addr",
            &metrics.to_string(),
            "--scheduler-url",
            scheduler_url,
            "--default-image",
            "daskrs:test",
            "--retire-timeout-seconds",
            "5",
            "--scale-down-delay-seconds",
            "1",
            "--log",
            "info,daskrs_operator=debug",
        ]
        .map(String::from);
        let name = format!("{namespace}-{identity}");
        Self::start_args(plane, kubeconfig, &args, &name, identity, metrics)
    }

    /// Runs the operator with these arguments, as the pod `identity` whose
    /// metrics listen at `metrics` (the arguments say so too).
    pub fn start_args(
        plane: &ControlPlane,
        kubeconfig: &Path,
        args: &[String],
        name: &str,
        identity: &str,
        metrics: SocketAddr,
    ) -> Self {
        let log = plane.dir.join(format!("operator-{name}.log"));
        let file = std::fs::File::create(&log).expect("operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_daskrs-operator"))
            .args(args)
            .env("POD_NAME", identity)
            .env("KUBECONFIG", kubeconfig)
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start daskrs-operator");
        Operator {
            child: Some(child),
            metrics,
            identity: identity.into(),
            log,
        }
    }

    /// Whether this operator holds the Lease within `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.metric("daskrs_operator_leader").await == Some(1.0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// A metric's value summed over its label sets; None when the server
    /// does not answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            body.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status once the process has gone.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stands in for the scheduler's HTTP API, since no pod runs here (there is
/// no kubelet): answers `/api/v1/adaptive` with what the test sets, retires
/// the workers the test says the scheduler holds, and records each call.
#[derive(Clone, Default)]
pub struct SchedulerStub {
    pub state: Arc<Mutex<StubState>>,
}

#[derive(Default, Debug)]
pub struct StubState {
    /// Worker names the scheduler knows, in its order of preference to close.
    pub workers: Vec<String>,
    pub desired_workers: u64,
    pub tasks_waiting: u64,
    pub idle_seconds: f64,
    /// Each retire request: (named workers, count).
    pub retire_calls: Vec<(Vec<String>, usize)>,
    /// The bearer token of each retire request.
    pub retire_tokens: Vec<Option<String>>,
}

impl SchedulerStub {
    pub async fn start() -> (Self, String) {
        use axum::routing::{get, post};
        use axum::{Json, Router};
        let stub = SchedulerStub::default();
        let s1 = stub.clone();
        let s2 = stub.clone();
        let app = Router::new()
            .route(
                "/api/v1/adaptive",
                get(move || {
                    let s = s1.state.lock().unwrap();
                    let v = serde_json::json!({
                        "desired_workers": s.desired_workers,
                        "current_workers": s.workers.len(),
                        "tasks_waiting": s.tasks_waiting,
                        "tasks_processing": 0,
                        "idle_seconds": s.idle_seconds,
                    });
                    async move { Json(v) }
                }),
            )
            .route(
                "/api/v1/retire",
                post(
                    move |headers: axum::http::HeaderMap, Json(body): Json<serde_json::Value>| {
                        let mut s = s2.state.lock().unwrap();
                        let bearer = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .map(String::from);
                        s.retire_tokens.push(bearer);
                        let named: Vec<String> = body["workers"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|v| v.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let count = body["count"].as_u64().unwrap_or(0) as usize;
                        s.retire_calls.push((named.clone(), count));
                        let retired: Vec<String> = if named.is_empty() {
                            s.workers.iter().take(count).cloned().collect()
                        } else {
                            named
                        };
                        s.workers.retain(|w| !retired.contains(w));
                        let v = serde_json::json!({ "retired": retired });
                        async move { Json(v) }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (stub, format!("http://{addr}"))
    }
}

/// A kubeconfig for a `daskrs-operator` ServiceAccount in `namespace` that
/// holds only the roles of `operator/rbac/clusterrole.yaml` (through
/// RoleBindings), so an operator run with it proves those roles are enough.
pub fn operator_kubeconfig(plane: &ControlPlane, namespace: &str) -> PathBuf {
    let run = |args: &[&str], stdin: Option<&str>| {
        let out = plane.kubectl_stdin(args, stdin);
        assert!(out.status.success(), "kubectl {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    run(&["apply", "-f", "operator/rbac/clusterrole.yaml"], None);
    run(
        &[
            "create",
            "serviceaccount",
            "daskrs-operator",
            "-n",
            namespace,
        ],
        None,
    );
    for role in ["daskrs-operator", "daskrs-operator-leader-election"] {
        run(
            &[
                "create",
                "rolebinding",
                role,
                "-n",
                namespace,
                &format!("--clusterrole={role}"),
                &format!("--serviceaccount={namespace}:daskrs-operator"),
            ],
            None,
        );
    }
    let token = run(
        &[
            "create",
            "token",
            "daskrs-operator",
            "-n",
            namespace,
            "--duration=2h",
        ],
        None,
    );
    plane.kubeconfig_with_token(&format!("operator-{namespace}"), &token)
}
