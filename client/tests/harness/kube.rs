//! A real Kubernetes control plane for the end-to-end test: etcd,
//! kube-apiserver and kube-controller-manager started by
//! `scripts/kube-up.sh` (binaries from `scripts/install-kube.sh`), the real
//! `kubectl` and `helm`, and the operator binary as its own process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails with what to run when a tool the test needs is missing.
pub fn require_tools() {
    for (tool, script) in [
        ("etcd", "scripts/install-kube.sh"),
        ("kube-apiserver", "scripts/install-kube.sh"),
        ("kube-controller-manager", "scripts/install-kube.sh"),
        ("kubectl", "scripts/install-kube.sh"),
        ("helm", "scripts/install-kube.sh"),
        ("minio", "scripts/install-minio.sh"),
    ] {
        let path = bin_dir().join(tool);
        assert!(path.exists(), "{} is missing: run {script}", path.display());
    }
}

#[path = "../../../tests/support/control_plane.rs"]
mod control_plane;
#[allow(unused_imports)] // each test binary uses a part
pub use control_plane::{ControlPlane, bin_dir, repo, stderr, stdout};

/// What the end-to-end test adds to the shared control plane.
impl ControlPlane {
    /// A control plane of this test's own.
    pub fn start_e2e() -> ControlPlane {
        ControlPlane::start(std::env::temp_dir().join(format!("daskrs-e2e-{}", std::process::id())))
    }

    /// kubectl that must succeed; its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            stderr(&out)
        );
        stdout(&out)
    }

    /// The real helm against this control plane, its state kept out of $HOME.
    pub fn helm(&self, args: &[&str]) -> Output {
        let home = self.dir.join("helm");
        Command::new(bin_dir().join("helm"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .expect("run helm")
    }

    /// The last lines of each control-plane component's log.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for c in ["kube-apiserver", "kube-controller-manager"] {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{c}.log"))).unwrap_or_default();
            out.push_str(&format!("--- {c}\n{}", super::node::tail(&text, lines)));
        }
        out
    }
}

/// Kills the pids listed in `dir` once this test process has gone, in
/// case it dies without running `Drop` (a SIGKILL).
pub fn start_watchdog(dir: &Path) {
    let script = r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done
for f in "$1"/*; do [ -f "$f" ] && kill -KILL "${f##*/}" 2>/dev/null; done
rm -rf "$1""#;
    // `setsid -f` forks the watchdog off into a session of its own and
    // returns at once.
    let started = Command::new("setsid")
        .args(["-f", "bash", "-c", script])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start a watchdog");
    assert!(
        started.success(),
        "the watchdog of {} did not start",
        dir.display()
    );
}

/// A local process killed on drop, its output in a log file; killed
/// also when this test process dies without dropping it.
pub struct Process {
    child: std::sync::Mutex<Option<Child>>,
    pub log: PathBuf,
    pid_file: PathBuf,
}

impl Process {
    pub fn start(mut cmd: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let dir = std::env::temp_dir().join(format!(
            "daskrs-e2e-{}-process-{}-pids",
            std::process::id(),
            child.id()
        ));
        std::fs::create_dir_all(&dir).expect("create the pid directory");
        let pid_file = dir.join(child.id().to_string());
        std::fs::write(&pid_file, format!("{cmd:?}")).expect("write the pid file");
        start_watchdog(&dir);
        Process {
            child: std::sync::Mutex::new(Some(child)),
            log,
            pid_file,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, once the process has ended.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .expect("child")
            .as_mut()?
            .try_wait()
            .ok()
            .flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = self.child.get_mut().map(Option::take);
        if let Ok(Some(mut c)) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Reaped: the watchdog must not signal this pid any more.
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Polls `check` every 100 ms until it returns Some; after `timeout`,
/// fails naming `what`, with what `diagnose` tells about the state.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    diagnose: &dyn Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                diagnose()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
