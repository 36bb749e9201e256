//! What the benchmark programs share: processes they start and stop, and
//! the security a cluster runs with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daskrs_client::Client;
use daskrs_proto::auth::{TOKEN_ENV, Token};
use daskrs_proto::tls::{TLS_DIR_ENV, Tls};

/// A cluster token and TLS certificates (made by `daskrs certs`), as a
/// cluster on Kubernetes runs by default.
pub struct Security {
    pub token: Token,
    certs: PathBuf,
}

impl Security {
    /// A fresh token, and certificates of a fresh authority in `dir`.
    pub fn make(daskrs: &Path, dir: &Path) -> Security {
        let certs = dir.join("certs");
        let out = Command::new(daskrs)
            .args(["certs", "--cluster", "bench", "--out"])
            .arg(&certs)
            .output()
            .expect("the daskrs binary runs");
        assert!(
            out.status.success(),
            "daskrs certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Security {
            token: Token::generate(),
            certs,
        }
    }

    /// The environment of the cluster's member `who` (`scheduler`, `worker`).
    pub fn env(&self, who: &str) -> Vec<(String, String)> {
        vec![
            (TOKEN_ENV.into(), self.token.expose().into()),
            (
                TLS_DIR_ENV.into(),
                self.certs.join(who).display().to_string(),
            ),
        ]
    }

    /// The environment of `who` in a cluster with `security`, or none.
    pub fn env_of(security: Option<&Security>, who: &str) -> Vec<(String, String)> {
        security.map(|s| s.env(who)).unwrap_or_default()
    }
}

/// A client of the scheduler at `address`, once it answers (within 30 s).
pub async fn connect(address: &str, security: Option<&Security>) -> Client {
    let tls = security.map(|s| Tls::load(&s.certs.join("client")).expect("client certificates"));
    let token = security.map(|s| &s.token);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_with(address, token, tls.as_ref()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `daskrs scheduler` on loopback ports of its choosing and returns
/// it with the address of its gRPC port, read from the port file it writes
/// in `dir` once it listens; `env` is its environment's additions.
pub fn start_scheduler(daskrs: &Path, dir: &Path, env: &[(String, String)]) -> (Proc, String) {
    let port_file = dir.join("scheduler.ports");
    let child = Command::new(daskrs)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--http-port",
            "0",
        ])
        .arg("--port-file")
        .arg(&port_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("the daskrs binary starts");
    let mut scheduler = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            break text;
        }
        if let Ok(Some(status)) = scheduler.0.try_wait() {
            panic!("the scheduler exited ({status}) before it listened");
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let ports: std::collections::HashMap<String, u16> =
        serde_json::from_str(&text).expect("the port file is JSON");
    (scheduler, format!("127.0.0.1:{}", ports["grpc"]))
}
