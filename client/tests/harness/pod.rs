//! One pod on the test node, from start to deletion, as the kubelet runs
//! it: the container starts once its configuration resolves, its status
//! (phase, pod address, readiness from its probe, restarts) is reported to
//! the API server, it is restarted per the pod's `restartPolicy`, and on
//! deletion it gets SIGTERM, then SIGKILL after the grace period, before the
//! node confirms the deletion.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus, Probe,
    Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;

use super::kubelet::PodEntry;
use super::net;
use super::node::NodeShared;
use super::pod_env::{self, Rendered, Waiting};

/// How a pod stops being this node's to run.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Deleted gracefully: stop within this grace period, then confirm.
    Deleting(Duration),
    /// Removed from the API server already (or the node stops): kill.
    Gone,
}

fn fate(rx: &watch::Receiver<Option<Pod>>) -> Option<Fate> {
    match &*rx.borrow() {
        None => Some(Fate::Gone),
        Some(p) if p.metadata.deletion_timestamp.is_some() => {
            let seconds = p
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| p.spec.as_ref()?.termination_grace_period_seconds)
                .unwrap_or(30);
            Some(Fate::Deleting(Duration::from_secs(seconds.max(0) as u64)))
        }
        Some(_) => None,
    }
}

async fn stopping(rx: &mut watch::Receiver<Option<Pod>>) -> Fate {
    loop {
        if let Some(f) = fate(rx) {
            return f;
        }
        if rx.changed().await.is_err() {
            return Fate::Gone;
        }
    }
}

async fn wait_or_stop(rx: &mut watch::Receiver<Option<Pod>>, d: Duration) -> Option<Fate> {
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        f = stopping(rx) => Some(f),
    }
}

/// Runs the pod that `rx` carries (the node sends each new version of it,
/// and None once it is gone) until it is deleted.
pub async fn run_pod(node: Arc<NodeShared>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    if fate(&rx).is_some() {
        // Deleted before it ran here: only the deletion is left to confirm.
        return finish(&node, &pod, &mut rx).await;
    }
    let ip = node.net.allocate_pod_ip();
    let mut status = Status::new(&node.client, &pod, ip);
    let name = pod.name_any();
    let ns = pod.namespace().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let pod_dir = node
        .dir
        .join("pods")
        .join(format!("{ns}_{name}_{}", &uid[..uid.len().min(8)]));
    let secrets: Api<Secret> = Api::namespaced(node.client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(node.client.clone(), &ns);

    let container = match pod_env::container(&pod) {
        Ok(c) => c.clone(),
        Err(w) => {
            status.waiting(&w).await;
            return finish(&node, &pod, &mut rx).await;
        }
    };
    status.container = container.name.clone();
    let reference = container.image.clone().unwrap_or_default();
    status.image = reference.clone();
    let Some(image) = pod_env::find_image(&node.images, &reference).cloned() else {
        let w = Waiting {
            reason: "ErrImagePull".into(),
            message: format!("the test node has no image {reference:?}"),
        };
        status.waiting(&w).await;
        return finish(&node, &pod, &mut rx).await;
    };
    let log = pod_dir.join(format!("{}.log", container.name));
    // Where the kubelet's endpoints find the pod, until this runner ends.
    let entry = node.pods.enter(
        &ns,
        &name,
        PodEntry {
            uid: uid.clone(),
            ip,
            container: container.name.clone(),
            log: log.clone(),
            pid: None,
        },
    );
    let restart = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let mut backoff = Duration::from_secs(1);
    loop {
        let rendered = loop {
            let w = match pod_env::render(
                &pod,
                &image,
                ip,
                &pod_dir,
                &node.net,
                &secrets,
                &config_maps,
            )
            .await
            {
                Ok(r) => break r,
                Err(w) => w,
            };
            status.waiting(&w).await;
            if wait_or_stop(&mut rx, Duration::from_millis(250))
                .await
                .is_some()
            {
                return finish(&node, &pod, &mut rx).await;
            }
        };
        let mut child = match spawn(&rendered, &log) {
            Ok(c) => c,
            Err(e) => {
                let w = Waiting {
                    reason: "RunContainerError".into(),
                    message: format!("{}: {e}", rendered.program.display()),
                };
                status.waiting(&w).await;
                if wait_or_stop(&mut rx, backoff).await.is_some() {
                    return finish(&node, &pod, &mut rx).await;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let pid = child.id().expect("a process just started has a pid");
        node.processes.add(pid, &name);
        entry.set_pid(Some(pid));
        eprintln!("node: pod {ns}/{name} runs as pid {pid} on {ip}");
        status.running(pid).await;
        let mut prober = Prober::new(container.readiness_probe.clone(), &pod, ip);
        let stop = loop {
            tokio::select! {
                exit = child.wait() => break Err(exit),
                f = stopping(&mut rx) => break Ok(f),
                ready = prober.next() => status.set_ready(ready).await,
            }
        };
        match stop {
            Ok(f) => {
                let grace = match f {
                    Fate::Deleting(g) => g,
                    Fate::Gone => Duration::ZERO,
                };
                let exit = terminate(&mut child, grace).await;
                node.processes.remove(pid);
                entry.set_pid(None);
                eprintln!("node: pod {ns}/{name} (pid {pid}) stopped: {exit:?}");
                if let Fate::Deleting(_) = f {
                    confirm_deletion(&node, &pod).await;
                }
                return;
            }
            Err(exit) => {
                node.processes.remove(pid);
                entry.set_pid(None);
                let code = exit.as_ref().map(exit_code).unwrap_or(128);
                eprintln!("node: pod {ns}/{name} (pid {pid}) exited with {code}");
                let again = match restart.as_str() {
                    "Always" => true,
                    "OnFailure" => code != 0,
                    _ => false,
                };
                status.exited(code, exit.ok().and_then(|e| e.signal()));
                if !again {
                    status.finished(code).await;
                    return finish(&node, &pod, &mut rx).await;
                }
                // The kubelet backs off from 10 s to 5 minutes; the test
                // node from 1 s to 10 s, which changes nothing but the wait.
                status.restarts += 1;
                let w = Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!("back-off {backoff:?} restarting the failed container"),
                };
                status.waiting(&w).await;
                if wait_or_stop(&mut rx, backoff).await.is_some() {
                    return finish(&node, &pod, &mut rx).await;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Nothing runs any more: waits for the deletion and confirms it.
async fn finish(node: &NodeShared, pod: &Pod, rx: &mut watch::Receiver<Option<Pod>>) {
    if let Fate::Deleting(_) = stopping(rx).await {
        confirm_deletion(node, pod).await;
    }
}

/// Deletes the pod with no grace period, as the kubelet does once its
/// containers have stopped.
async fn confirm_deletion(node: &NodeShared, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => eprintln!("node: pod {} deleted", pod.name_any()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => eprintln!("node: cannot delete pod {}: {e}", pod.name_any()),
    }
}

fn spawn(r: &Rendered, log: &Path) -> std::io::Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    tokio::process::Command::new(&r.program)
        .args(&r.args)
        .env_clear()
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&r.workdir)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
}

/// SIGTERM, then SIGKILL once `grace` has passed; the exit status.
async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    // Not reaped yet, so the pid is still this child's.
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => r.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

fn exit_code(s: &ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// The readiness probe, run every second or every `periodSeconds`,
/// whichever is shorter (the same answers as the kubelet's, sooner).
struct Prober {
    probe: Option<Probe>,
    target: Option<SocketAddr>,
    due: Instant,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
    failures: u32,
    ready: bool,
}

impl Prober {
    fn new(probe: Option<Probe>, pod: &Pod, ip: Ipv4Addr) -> Prober {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let (delay, period, timeout, failures) = match &probe {
            Some(p) => (
                secs(p.initial_delay_seconds, 0),
                secs(p.period_seconds, 10).min(Duration::from_secs(1)),
                secs(p.timeout_seconds, 1).max(Duration::from_millis(500)),
                p.failure_threshold.unwrap_or(3).max(1) as u32,
            ),
            None => (Duration::ZERO, Duration::from_secs(1), Duration::ZERO, 1),
        };
        let port = probe.as_ref().and_then(|p| {
            let port = p
                .http_get
                .as_ref()
                .map(|h| &h.port)
                .or(p.tcp_socket.as_ref().map(|t| &t.port))?;
            match port {
                IntOrString::Int(n) => Some(*n),
                IntOrString::String(name) => net::container_port(pod, name),
            }
        });
        let host = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref()?.host.as_ref()?.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::V4(ip));
        Prober {
            target: port.and_then(|p| Some(SocketAddr::new(host, u16::try_from(p).ok()?))),
            probe,
            due: Instant::now() + delay,
            period,
            timeout,
            failure_threshold: failures,
            failures: 0,
            ready: false,
        }
    }

    /// Waits for the next probe, runs it, and says whether the container
    /// is ready now.
    async fn next(&mut self) -> bool {
        tokio::time::sleep_until(self.due).await;
        self.due = Instant::now() + self.period;
        let ok = match (&self.probe, self.target) {
            (None, _) => true,
            (Some(p), Some(addr)) if p.http_get.is_some() => {
                let path = p
                    .http_get
                    .as_ref()
                    .and_then(|h| h.path.clone())
                    .unwrap_or_else(|| "/".into());
                matches!(net::http_get(addr, &path, self.timeout).await, Some((s, _)) if (200..400).contains(&s))
            }
            (Some(p), Some(addr)) if p.tcp_socket.is_some() => {
                tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
            // exec and gRPC probes are not run here: never ready.
            _ => false,
        };
        if ok {
            self.failures = 0;
            self.ready = true;
        } else {
            self.failures += 1;
            if self.failures >= self.failure_threshold {
                self.ready = false;
            }
        }
        self.ready
    }
}

fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The pod's status as this node reports it; a patch is sent only when
/// something changed.
struct Status {
    api: Api<Pod>,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    created: Time,
    container: String,
    image: String,
    restarts: i32,
    phase: &'static str,
    state: ContainerState,
    last_state: Option<ContainerState>,
    pid: Option<u32>,
    ready: bool,
    ready_since: Time,
    sent: Option<serde_json::Value>,
}

impl Status {
    fn new(client: &Client, pod: &Pod, ip: Ipv4Addr) -> Status {
        let api = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        Status {
            api,
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            ip,
            created: now(),
            container: String::new(),
            image: String::new(),
            restarts: 0,
            phase: "Pending",
            state: ContainerState::default(),
            last_state: None,
            pid: None,
            ready: false,
            ready_since: now(),
            sent: None,
        }
    }

    async fn waiting(&mut self, w: &Waiting) {
        self.pid = None;
        self.set_ready_flag(false);
        self.state = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(w.reason.clone()),
                message: Some(w.message.clone()),
            }),
            ..ContainerState::default()
        };
        self.send().await;
    }

    async fn running(&mut self, pid: u32) {
        self.pid = Some(pid);
        self.phase = "Running";
        self.set_ready_flag(false);
        self.state = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now()),
            }),
            ..ContainerState::default()
        };
        self.send().await;
    }

    async fn set_ready(&mut self, ready: bool) {
        self.set_ready_flag(ready);
        self.send().await;
    }

    fn set_ready_flag(&mut self, ready: bool) {
        if ready != self.ready {
            self.ready = ready;
            self.ready_since = now();
        }
    }

    /// The container ended with `code`: it becomes the last state.
    fn exited(&mut self, code: i32, signal: Option<i32>) {
        let started_at = self
            .state
            .running
            .as_ref()
            .and_then(|r| r.started_at.clone());
        self.set_ready_flag(false);
        self.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                signal,
                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                started_at,
                finished_at: Some(now()),
                container_id: self.pid.map(container_id),
                message: None,
            }),
            ..ContainerState::default()
        });
    }

    /// The pod ends: Succeeded or Failed by the last exit code.
    async fn finished(&mut self, code: i32) {
        self.phase = if code == 0 { "Succeeded" } else { "Failed" };
        if let Some(last) = self.last_state.take() {
            self.state = last;
        }
        self.send().await;
    }

    async fn send(&mut self) {
        let ip = self.ip.to_string();
        let ready = if self.ready { "True" } else { "False" };
        let done = matches!(self.phase, "Succeeded" | "Failed");
        let condition = |type_: &str, status: &str, since: &Time| PodCondition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: Some(since.clone()),
            reason: (done && matches!(type_, "Ready" | "ContainersReady"))
                .then(|| "PodCompleted".into()),
            ..PodCondition::default()
        };
        let status = PodStatus {
            phase: Some(self.phase.into()),
            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
            host_ips: Some(vec![HostIP {
                ip: Ipv4Addr::LOCALHOST.to_string(),
            }]),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            start_time: Some(self.created.clone()),
            conditions: Some(vec![
                condition("PodReadyToStartContainers", "True", &self.created),
                condition("Initialized", "True", &self.created),
                condition("ContainersReady", ready, &self.ready_since),
                condition("Ready", ready, &self.ready_since),
                condition("PodScheduled", "True", &self.created),
            ]),
            container_statuses: Some(vec![ContainerStatus {
                name: self.container.clone(),
                image: self.image.clone(),
                image_id: self.image.clone(),
                container_id: self.pid.map(container_id),
                ready: self.ready,
                restart_count: self.restarts,
                started: Some(self.state.running.is_some()),
                state: Some(self.state.clone()),
                last_state: self.last_state.clone(),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        };
        let body = serde_json::json!({
            // A precondition: a pod of the same name made anew is not ours.
            "metadata": { "uid": self.uid },
            "status": status,
        });
        if self.sent.as_ref() == Some(&body) {
            return;
        }
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => self.sent = Some(body),
            Err(e) => eprintln!("node: cannot report the status of pod {}: {e}", self.name),
        }
    }
}

fn container_id(pid: u32) -> String {
    format!("process://{pid}")
}
