//! What the benchmark programs share: processes they start and stop, and
//! the security a cluster runs with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daskrs_client::Client;
use daskrs_proto::auth::{TOKEN_ENV, Token};
use daskrs_proto::tls::{TLS_DIR_ENV, Tls};

/// What every SQL benchmark is told: the binary, the cluster's size, the
/// runs and the queries.
#[derive(clap::Args)]
pub struct Common {
    /// The `daskrs` binary to benchmark (a release build).
    #[arg(long)]
    pub daskrs: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Runs of each query on each side; the best is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Query numbers; all when left out.
    #[arg(long, value_delimiter = ',')]
    pub queries: Vec<usize>,
}

impl Common {
    /// The queries asked for, or 1 to `all`.
    pub fn queries_or_all(&self, all: usize) -> Vec<usize> {
        if self.queries.is_empty() {
            (1..=all).collect()
        } else {
            self.queries.clone()
        }
    }
}

/// Figures of another system by query (`{"q1": seconds, ...}`) from a
/// JSON file, or none when it is not given or unreadable.
pub fn figures(path: Option<&Path>) -> serde_json::Value {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Where a query's task time went, as a line: the seconds its tasks ran
/// and waited (for inputs from peers, then for a thread) in all, and the
/// `most` stages that ran longest, each with its seconds, tasks and bytes
/// fetched from other workers.
pub fn stage_times(times: &[daskrs_proto::PrefixTotals], most: usize) -> String {
    let ran: f64 = times.iter().map(|t| t.seconds).sum();
    let waited: f64 = times.iter().map(|t| t.waited).sum();
    let mut parts: Vec<String> = times
        .iter()
        .take(most)
        .map(|t| {
            format!(
                "{} ran {:.3} s, waited {:.3} s, {} tasks, {:.1} MB fetched",
                t.prefix,
                t.seconds,
                t.waited,
                t.tasks,
                t.transfer_bytes as f64 / 1e6
            )
        })
        .collect();
    if times.len() > most {
        parts.push(format!("{} more stages", times.len() - most));
    }
    format!(
        "tasks ran {ran:.3} s, waited {waited:.3} s: {}",
        parts.join("; ")
    )
}

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

fn spawn(bin: &Path, args: &[String], env: &[(String, String)]) -> Proc {
    Proc(
        Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("daskrs starts"),
    )
}

/// The peak resident memory of process `pid`, in MiB.
pub fn resident_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A scheduler and worker processes of the `daskrs` binary on loopback,
/// with tables created.
pub struct Cluster {
    pub client: Client,
    pub scheduler: Proc,
    pub workers: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// The peak resident memory of the scheduler and each worker, as a line.
    pub fn peak_memory(&self) -> String {
        let peak: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("{:.0} MiB", resident_mib(w.0.id())))
            .collect();
        format!(
            "peak resident memory: scheduler {:.0} MiB, workers {}",
            resident_mib(self.scheduler.0.id()),
            peak.join(", ")
        )
    }

    /// The workers and threads `c` asks for; with `secure`, a token and
    /// TLS; `tables` is the SQL that creates the tables.
    pub async fn start(c: &Common, secure: bool, tables: &str) -> Cluster {
        let (daskrs, workers, threads) = (c.daskrs.as_path(), c.workers, c.threads);
        let run_dir = tempfile::tempdir().expect("a temporary directory");
        let security = secure.then(|| Security::make(daskrs, run_dir.path()));
        let (scheduler, address) = start_scheduler(
            daskrs,
            run_dir.path(),
            &Security::env_of(security.as_ref(), "scheduler"),
        );
        let mut procs = Vec::new();
        for i in 0..workers {
            procs.push(spawn(
                daskrs,
                &[
                    "worker".into(),
                    "--scheduler".into(),
                    address.clone(),
                    "--name".into(),
                    format!("w{i}"),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    "0".into(),
                    "--http-port".into(),
                    "0".into(),
                    "--nthreads".into(),
                    threads.to_string(),
                ],
                &Security::env_of(security.as_ref(), "worker"),
            ));
        }
        let client = connect(&address, security.as_ref()).await;
        client
            .wait_for_workers(workers as usize, Duration::from_secs(30))
            .await
            .expect("workers join");
        client
            .sql(tables, |_| {})
            .await
            .expect("tables are created");
        Cluster {
            client,
            scheduler,
            workers: procs,
            _dir: run_dir,
        }
    }
}
