//! Starts the `daskrs` binary as separate scheduler and worker processes on
//! loopback, and stops them when dropped.

#![allow(dead_code)]

pub mod graphs;
pub mod kube;
pub mod net;
pub mod node;
pub mod pod;
pub mod pod_env;
pub mod s3;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use daskrs_client::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_daskrs");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    /// Environment for every process of the cluster (S3 credentials).
    env: Vec<(String, String)>,
}

fn quiet(cmd: &mut Command) -> &mut Command {
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
        let mut c = Cluster {
            port: free_port(),
            http_port: free_port(),
            scheduler: None,
            workers: Vec::new(),
            worker_names: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            scheduler_args: scheduler_args.iter().map(|s| s.to_string()).collect(),
            env: env.to_vec(),
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

    pub fn start_scheduler(&mut self) {
        let child = quiet(Command::new(BIN).arg("scheduler"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--http-port",
                &self.http_port.to_string(),
            ])
            .args(&self.scheduler_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .unwrap();
        self.scheduler = Some(Proc { child });
        wait_port(self.port);
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
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .unwrap();
        self.workers.push(Proc { child });
        self.worker_names.push(name);
        i
    }

    pub async fn client(&self, workers: usize) -> Client {
        let client = Client::connect(&self.address()).await.unwrap();
        client
            .wait_for_workers(workers, Duration::from_secs(30))
            .await
            .unwrap();
        client
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http(self.http_port, "GET", path, "")
    }
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 request; returns status and body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

/// Runs `daskrs submit` on a graph file and returns its output.
pub fn submit(scheduler: &str, graph: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["submit", "--scheduler", scheduler])
        .arg(graph)
        .args(extra)
        .env("DASKRS_LOG", "error")
        .output()
        .unwrap()
}
