//! The control plane the operator tests and the end-to-end test share:
//! etcd, kube-apiserver and kube-controller-manager started by
//! `scripts/kube-up.sh` (binaries from `scripts/install-kube.sh`), driven
//! with the real `kubectl`. Included by path from each test crate's harness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
}

/// Where `scripts/install-kube.sh` and `scripts/install-minio.sh` put
/// their binaries.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("DASKRS_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/daskrs/bin")
        })
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// etcd, kube-apiserver and kube-controller-manager, stopped on drop, and
/// by themselves once this test process has exited.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane with its state in `dir`.
    pub fn start(dir: PathBuf) -> ControlPlane {
        let out = Command::new(repo().join("scripts/kube-up.sh"))
            .arg(&dir)
            .env("KUBE_UP_PARENT", std::process::id().to_string())
            // Generous: on a loaded 2-core machine the first start is slow.
            .env("KUBE_UP_TIMEOUT", "180")
            .output()
            .expect("run scripts/kube-up.sh");
        assert!(
            out.status.success(),
            "scripts/kube-up.sh failed (scripts/install-kube.sh installs its binaries):\n{}",
            stderr(&out)
        );
        ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
        }
    }

    /// Runs the real kubectl against this control plane, from the repo root.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin_dir().join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut pipe = child.stdin.take().expect("stdin piped");
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).expect("write to kubectl");
        }
        drop(pipe);
        child.wait_with_output().expect("kubectl output")
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Waits until the CRD `name` (`<plural>.<group>`) is established.
    /// Polled: `kubectl wait` errs while the CRD has no conditions yet.
    pub fn wait_established(&self, name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = self.kubectl(&[
                "get",
                &format!("crd/{name}"),
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]);
            if stdout(&out).trim() == "True" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CRD {name} not established: {}",
                stderr(&out)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The admin kubeconfig with its user's credentials swapped for `token`.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("read kubeconfig");
        let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
        config["users"][0]["user"] =
            serde_yaml::to_value(BTreeMap::from([("token", token.trim())])).expect("token YAML");
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            serde_yaml::to_string(&config).expect("kubeconfig YAML"),
        )
        .expect("write kubeconfig");
        path
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/kube-down.sh"))
            .arg(&self.dir)
            .output();
    }
}
