//! What the benchmark programs share: processes they start and stop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
/// in `dir` once it listens. With `token`, it requires that cluster token.
pub fn start_scheduler(daskrs: &Path, dir: &Path, token: Option<&str>) -> (Proc, String) {
    let port_file = dir.join("scheduler.ports");
    let mut cmd = Command::new(daskrs);
    if let Some(t) = token {
        cmd.env("DASKRS_TOKEN", t);
    }
    let child = cmd
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
