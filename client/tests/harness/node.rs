//! A test node: plays the kubelet (and, as no kube-scheduler runs, the
//! scheduler) for the pods of one namespace, with the processes on this
//! machine.
//!
//! - It registers a Node that is Ready and keeps it so, renewing its Lease
//!   in `kube-node-lease` and its Ready condition's heartbeat, so that
//!   kube-controller-manager does not mark it unreachable and evict its pods.
//! - It binds the namespace's unscheduled pods to itself through the
//!   `pods/binding` subresource.
//! - It runs each pod bound to it (`pod`), with the cluster network of `net`.
//! - It serves the kubelet's port-forward and log endpoints (`kubelet`), at
//!   the port its Node reports, for the API server's `pods/portforward` and
//!   `pods/log`.
//! - Dropping it kills every process it started; should the test process
//!   die first, a watchdog does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Binding, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::kubelet::{self, PodTable};
use super::net::ClusterNet;
use super::pod::run_pod;
use super::pod_env::Image;

const LEASE_SECONDS: i32 = 40;
const HEARTBEAT: Duration = Duration::from_secs(10);

pub struct NodeConfig {
    pub name: String,
    /// The namespace whose pods this node schedules and runs.
    pub namespace: String,
    /// Pod directories (volumes, working directories, container logs).
    pub dir: PathBuf,
    pub images: Vec<Image>,
}

pub struct NodeAgent {
    shared: Arc<NodeShared>,
    proxy: std::net::SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeAgent {
    pub async fn start(client: Client, config: NodeConfig) -> NodeAgent {
        let net = ClusterNet::new(&config.namespace);
        let (proxy, proxy_task) = net.serve_http_proxy().await;
        let shared = Arc::new(NodeShared {
            client: client.clone(),
            name: config.name.clone(),
            net,
            images: config.images,
            // Outside `dir`, which the control plane's own watcher removes.
            processes: Processes::new(std::env::temp_dir().join(format!(
                "daskrs-e2e-{}-{}-pids",
                std::process::id(),
                config.name
            ))),
            dir: config.dir,
            pods: PodTable::default(),
        });
        super::kube::start_watchdog(shared.processes.dir());
        let (kubelet_port, kubelet_task) = kubelet::serve(shared.clone()).await;
        let node = register(&client, &shared.name, kubelet_port).await;
        let heartbeat = tokio::spawn(heartbeat(client.clone(), node));
        let pods = tokio::spawn(sync_loop(shared.clone()));
        NodeAgent {
            shared,
            proxy,
            tasks: vec![proxy_task, kubelet_task, heartbeat, pods],
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The HTTP forward proxy that resolves Service names (for `HTTP_PROXY`).
    pub fn http_proxy(&self) -> std::net::SocketAddr {
        self.proxy
    }

    /// A loopback address of its own, as a pod would have, for a process of
    /// the cluster that runs outside the node (the operator): it can listen
    /// on its usual ports there.
    pub fn allocate_address(&self) -> std::net::Ipv4Addr {
        self.shared.net.allocate_pod_ip()
    }

    /// What went through the HTTP proxy to the cluster's Services.
    pub fn proxied(&self) -> Vec<super::net::Proxied> {
        self.shared.net.proxied()
    }

    /// Processes of this machine whose working directory is in one of this
    /// node's pods, found in /proc rather than in the node's own records.
    pub fn processes_in_pods(&self) -> Vec<u32> {
        let pods = self.shared.dir.join("pods");
        let pods = pods.canonicalize().unwrap_or(pods);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(&pods))
            })
            .collect()
    }

    /// (pid, pod name) of each pod process that runs now.
    pub fn processes(&self) -> Vec<(u32, String)> {
        self.shared.processes.list()
    }

    /// The last `lines` lines of each pod's container log whose pod name
    /// starts with `prefix`.
    pub fn logs(&self, prefix: &str, lines: usize) -> String {
        let mut out = String::new();
        let Ok(dirs) = std::fs::read_dir(self.shared.dir.join("pods")) else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = dirs.filter_map(|d| Some(d.ok()?.path())).collect();
        dirs.sort();
        for dir in dirs {
            let pod = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let pod_name = pod.split('_').nth(1).unwrap_or_default();
            if !pod_name.starts_with(prefix) {
                continue;
            }
            for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = f.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    out.push_str(&format!("--- {pod}: {}\n", path.display()));
                    out.push_str(&tail(&text, lines));
                }
            }
        }
        out
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.processes.kill_all();
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

fn node_conditions(now: &Time) -> Vec<NodeCondition> {
    let c = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: None,
    };
    vec![
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "the test node has memory",
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "the test node has disk",
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "the test node has pids",
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "the test node runs pods as local processes",
        ),
    ]
}

fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Creates the Node, Ready, its kubelet at `kubelet_port`, and returns it.
async fn register(client: &Client, name: &str, kubelet_port: u16) -> Node {
    let nodes: Api<Node> = Api::all(client.clone());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity("64Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
    ]);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let status = NodeStatus {
        conditions: Some(node_conditions(&now())),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: "127.0.0.1".into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            },
        ]),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(kubelet_port),
            }),
        }),
        ..NodeStatus::default()
    };
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubernetes.io/arch".to_string(), arch.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(status.clone()),
    };
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("register the test Node");
    let body = serde_json::json!({ "status": status });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .expect("report the test Node's status");
    created
}

/// Keeps the Node alive: its Lease renewed and its Ready heartbeat fresh.
async fn heartbeat(client: Client, node: Node) {
    let name = node.name_any();
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid: node.uid().unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    if let Err(e) = leases.create(&PostParams::default(), &lease).await {
        eprintln!("node: cannot create the Lease of {name}: {e}");
    }
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let renew = serde_json::json!({ "spec": { "renewTime": MicroTime(Timestamp::now()) } });
        if let Err(e) = leases
            .patch(&name, &PatchParams::default(), &Patch::Merge(&renew))
            .await
        {
            eprintln!("node: cannot renew the Lease of {name}: {e}");
        }
        let status = serde_json::json!({ "status": { "conditions": node_conditions(&now()) } });
        if let Err(e) = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
            .await
        {
            eprintln!("node: cannot renew the heartbeat of {name}: {e}");
        }
    }
}

/// What the node shares with each of its pods.
pub struct NodeShared {
    pub client: Client,
    pub name: String,
    pub net: Arc<ClusterNet>,
    pub images: Vec<Image>,
    pub dir: PathBuf,
    pub processes: Processes,
    /// The pods it runs, as its kubelet endpoints find them.
    pub pods: PodTable,
}

/// The node's running processes by pid, each also written as a file that
/// a watchdog reads should the test process die without cleaning up.
pub struct Processes {
    dir: PathBuf,
    running: Mutex<BTreeMap<u32, String>>,
}

impl Processes {
    pub fn new(dir: PathBuf) -> Processes {
        std::fs::create_dir_all(&dir).expect("create the pid directory");
        Processes {
            dir,
            running: Mutex::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn add(&self, pid: u32, pod: &str) {
        self.running
            .lock()
            .expect("processes")
            .insert(pid, pod.to_string());
        let _ = std::fs::write(self.dir.join(pid.to_string()), pod);
    }

    pub fn remove(&self, pid: u32) {
        self.running.lock().expect("processes").remove(&pid);
        let _ = std::fs::remove_file(self.dir.join(pid.to_string()));
    }

    /// (pid, pod name) of every process still running.
    pub fn list(&self) -> Vec<(u32, String)> {
        self.running
            .lock()
            .expect("processes")
            .iter()
            .map(|(p, n)| (*p, n.clone()))
            .collect()
    }

    /// SIGKILLs every process still running, at once, without waiting on
    /// the runtime (this runs in `Drop`, also while a test panics).
    pub fn kill_all(&self) {
        let pids: Vec<u32> = std::mem::take(&mut *self.running.lock().expect("processes"))
            .into_keys()
            .collect();
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_file(self.dir.join(pid.to_string()));
        }
    }
}

struct PodHandle {
    tx: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Every 200 ms: lists the namespace's pods and Services, binds what is
/// unscheduled, starts what is bound here and new, passes each pod's latest
/// version to its runner, and tells runners whose pod has gone.
async fn sync_loop(node: Arc<NodeShared>) {
    let ns = node.net.namespace().to_string();
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(node.client.clone(), &ns);
    let mut handles: HashMap<String, PodHandle> = HashMap::new();
    let mut warned: Vec<String> = Vec::new();
    let all = ListParams::default();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (listed, svcs) = match tokio::try_join!(pods.list(&all), services.list(&all)) {
            Ok((p, s)) => (p.items, s.items),
            Err(e) => {
                eprintln!("node: cannot list pods and Services of {ns}: {e}");
                continue;
            }
        };
        node.net.update(svcs, listed.clone());
        for pod in &listed {
            let uid = pod.uid().unwrap_or_default();
            let spec = pod.spec.clone().unwrap_or_default();
            match spec.node_name.as_deref() {
                None if pod.metadata.deletion_timestamp.is_none() => {
                    bind(&node, &pods, pod, &mut warned).await;
                }
                Some(n) if n == node.name => {
                    if let Some(h) = handles.get(&uid) {
                        h.tx.send_replace(Some(pod.clone()));
                        continue;
                    }
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    let ended = matches!(phase, Some("Succeeded" | "Failed"));
                    if ended && pod.metadata.deletion_timestamp.is_none() {
                        continue;
                    }
                    // A pod that ended before this node knew it still gets
                    // a runner: it confirms the deletion.
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let task = tokio::spawn(run_pod(node.clone(), rx));
                    handles.insert(uid, PodHandle { tx, task });
                }
                _ => {}
            }
        }
        let present: Vec<String> = listed.iter().filter_map(|p| p.uid()).collect();
        handles.retain(|uid, h| {
            if !present.contains(uid) {
                h.tx.send_replace(None);
            }
            // A finished runner stays while its pod exists, so the pod is
            // not started again.
            !h.task.is_finished() || present.contains(uid)
        });
    }
}

/// Binds an unscheduled pod to this node, if its node selector allows.
async fn bind(node: &NodeShared, pods: &Api<Pod>, pod: &Pod, warned: &mut Vec<String>) {
    let name = pod.name_any();
    let selector = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let fits = selector.iter().all(|(k, v)| match k.as_str() {
        "kubernetes.io/hostname" => *v == node.name,
        "kubernetes.io/os" => v == "linux",
        _ => false,
    });
    if !fits {
        if !warned.contains(&name) {
            eprintln!("node: pod {name} stays Pending: its nodeSelector {selector:?} does not fit");
            warned.push(name);
        }
        return;
    }
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: pod.namespace(),
            uid: pod.uid(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.name.clone()),
            ..ObjectReference::default()
        },
    };
    match pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => eprintln!("node: bound pod {name} to {}", node.name),
        // Bound meanwhile, or gone.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
        Err(e) => eprintln!("node: cannot bind pod {name}: {e}"),
    }
}
