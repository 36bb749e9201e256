//! Starts the `daskrs` binary as separate scheduler and worker processes on
//! loopback, and stops them when dropped.

#![allow(dead_code)]

pub mod browser;
pub mod dask_kubernetes;
pub mod graphs;
pub mod install;
pub mod kube;
pub mod kubelet;
pub mod net;
pub mod node;
pub mod pod;
pub mod pod_env;
pub mod s3;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use daskrs_client::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_daskrs");

/// A loopback port below the kernel's ephemeral range, so nothing that binds
/// port 0 can be handed it, locked for as long as this lives so that no
/// other test (nor `scripts/ports.sh`, which takes the same locks) picks it.
pub struct ReservedPort {
    pub port: u16,
    _lock: std::fs::File,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let lo: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        assert!(lo > 2048, "the ephemeral port range starts at {lo}");
        let first = if lo > 12048 { lo - 10000 } else { 1024 };
        let dir = ports_dir();
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::process::id(),
        );
        let span = u64::from(lo - first);
        for i in 0..span {
            let port = first + ((seed + i) % span) as u16;
            let Ok(lock) = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(dir.join(format!("{port}.lock")))
            else {
                continue;
            };
            if lock.try_lock().is_ok() && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return ReservedPort { port, _lock: lock };
            }
        }
        panic!("no free port in {first}..{lo}");
    }
}

/// Where this user's port locks live, shared with `scripts/ports.sh`.
fn ports_dir() -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let dir = PathBuf::from(format!("/tmp/daskrs-ports-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    dir
}

/// The ports a server started with `--port-file PATH` (and port 0) got:
/// waits for the file it writes once it listens, failing at once if the
/// process exits first.
pub fn read_ports(path: &Path, proc: &mut Proc) -> HashMap<String, u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("port file {} is not JSON ({e}): {text}", path.display())
            });
        }
        if let Some(status) = proc.child.try_wait().unwrap() {
            panic!(
                "the server exited ({status}) before writing {}",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no port file {} after 30 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub port: u16,
    pub http_port: u16,
    pub scheduler: Option<Proc>,
    pub workers: Vec<Proc>,
    pub worker_names: Vec<String>,
    pub dir: tempfile::TempDir,
    scheduler_args: Vec<String>,
    /// Environment for every process of the cluster (S3 credentials, the
    /// cluster token).
    env: Vec<(String, String)>,
    /// The cluster's token: every cluster of the tests has one.
    pub token: daskrs_proto::auth::Token,
    /// Dropped last (fields drop in order): the port stays this cluster's
    /// until its processes are gone.
    _reserved: ReservedPort,
}

pub fn quiet(cmd: &mut Command) -> &mut Command {
    let log = std::env::var("DASKRS_TEST_LOG").unwrap_or_else(|_| "warn".into());
    cmd.env("DASKRS_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
}

impl Cluster {
    pub fn start(workers: usize, scheduler_args: &[&str], worker_args: &[&str]) -> Cluster {
        Cluster::start_with_env(workers, scheduler_args, worker_args, &[])
    }

    pub fn start_with_env(
        workers: usize,
        scheduler_args: &[&str],
        worker_args: &[&str],
        env: &[(String, String)],
    ) -> Cluster {
        let reserved = ReservedPort::new();
        let token = daskrs_proto::auth::Token::generate();
        let mut env = env.to_vec();
        env.push((
            daskrs_proto::auth::TOKEN_ENV.to_string(),
            token.expose().to_string(),
        ));
        let mut c = Cluster {
            token,
            port: reserved.port,
            _reserved: reserved,
            // Chosen by the scheduler each time it starts.
            http_port: 0,
            scheduler: None,
            workers: Vec::new(),
            worker_names: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            scheduler_args: scheduler_args.iter().map(|s| s.to_string()).collect(),
            env,
        };
        c.start_scheduler();
        for _ in 0..workers {
            c.add_worker(worker_args);
        }
        c
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the scheduler, its gRPC on the cluster's reserved port (a
    /// restarted scheduler must be where the workers look for it), its
    /// HTTP on a port of its choosing.
    pub fn start_scheduler(&mut self) {
        let port_file = self.dir.path().join("scheduler.ports");
        let _ = std::fs::remove_file(&port_file);
        let child = quiet(Command::new(BIN).arg("scheduler"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--http-port",
                "0",
            ])
            .arg("--port-file")
            .arg(&port_file)
            .args(&self.scheduler_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .unwrap();
        let mut proc = Proc { child };
        let ports = read_ports(&port_file, &mut proc);
        assert_eq!(ports["grpc"], self.port);
        self.http_port = ports["http"];
        self.scheduler = Some(proc);
    }

    fn worker_port_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("w{i}.ports"))
    }

    /// Worker `i`'s peer data port.
    pub fn worker_peer_port(&mut self, i: usize) -> u16 {
        let path = self.worker_port_file(i);
        read_ports(&path, &mut self.workers[i])["peer"]
    }

    /// Worker `i`'s HTTP port (`/health`, `/ready`, `/metrics`).
    pub fn worker_http_port(&mut self, i: usize) -> u16 {
        let path = self.worker_port_file(i);
        read_ports(&path, &mut self.workers[i])["http"]
    }

    pub fn add_worker(&mut self, args: &[&str]) -> usize {
        let i = self.worker_names.len();
        let name = format!("w{i}");
        let child = quiet(Command::new(BIN).arg("worker"))
            .args([
                "--scheduler",
                &self.address(),
                "--name",
                &name,
                "--host",
                "127.0.0.1",
            ])
            .args(["--port", "0", "--nthreads", "1"])
            .args(if args.contains(&"--http-port") {
                &[][..]
            } else {
                &["--http-port", "0"][..]
            })
            .arg("--local-dir")
            .arg(self.dir.path())
            .arg("--port-file")
            .arg(self.worker_port_file(i))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .unwrap();
        self.workers.push(Proc { child });
        self.worker_names.push(name);
        i
    }

    pub async fn client(&self, workers: usize) -> Client {
        let client = Client::connect(&self.address(), Some(&self.token))
            .await
            .unwrap();
        client
            .wait_for_workers(workers, Duration::from_secs(30))
            .await
            .unwrap();
        client
    }

    /// The `daskrs` command, with the cluster's token in its environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env(daskrs_proto::auth::TOKEN_ENV, self.token.expose());
        cmd
    }

    /// The cluster's token in a file, for `--token-file`.
    pub fn token_file(&self) -> PathBuf {
        let path = self.dir.path().join("token");
        std::fs::write(&path, format!("{}\n", self.token.expose())).unwrap();
        path
    }

    /// A request to the scheduler's HTTP port, with the cluster's token.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, "")
    }

    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http_as(self.http_port, method, path, body, Some(&self.token))
    }
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 request, with `token` as a bearer token if given;
/// returns status and body.
pub fn http_as(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&daskrs_proto::auth::Token>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Runs `daskrs submit` on a graph file and returns its output; `token`
/// goes in `DASKRS_TOKEN`.
pub fn submit(
    scheduler: &str,
    token: Option<&daskrs_proto::auth::Token>,
    graph: &Path,
    extra: &[&str],
) -> Output {
    let mut cmd = Command::new(BIN);
    if let Some(t) = token {
        cmd.env(daskrs_proto::auth::TOKEN_ENV, t.expose());
    }
    cmd.args(["submit", "--scheduler", scheduler])
        .arg(graph)
        .args(extra)
        .env("DASKRS_LOG", "error")
        .output()
        .unwrap()
}
