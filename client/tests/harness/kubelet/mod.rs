//! The test node's kubelet server: the two endpoints of a kubelet's HTTPS
//! port that the API server proxies to, so that clients can use the
//! `pods/portforward` and `pods/log` subresources against the pods the node
//! runs.
//!
//! - `/portForward/{namespace}/{pod}`: WebSocket port-forwarding
//!   (`port_forward`);
//! - `/containerLogs/{namespace}/{pod}/{container}`: the container's log
//!   (`logs`).
//!
//! The API server reaches this server at the Node's InternalIP (127.0.0.1,
//! chosen by `--kubelet-preferred-address-types=InternalIP` in
//! `scripts/kube-up.sh`) and the port in the Node's
//! `status.daemonEndpoints.kubeletEndpoint`. Its certificate is
//! self-signed: without `--kubelet-certificate-authority` the API server
//! does not check it. No client certificate is asked for, so whoever
//! reaches the port may use it, as any port of the test's own processes.

mod logs;
mod port_forward;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::net::{read_head, respond};
use super::node::NodeShared;

/// What the kubelet's server knows of the pods the node runs, kept by each
/// pod's runner (`pod::run_pod`) from the start of its container to its end.
#[derive(Default)]
pub struct PodTable {
    pods: Mutex<HashMap<(String, String), PodEntry>>,
}

/// One pod of the node, as the kubelet's endpoints find it.
#[derive(Clone, Debug)]
pub struct PodEntry {
    pub uid: String,
    /// The pod's own address (see `net`).
    pub ip: Ipv4Addr,
    pub container: String,
    /// The container's log, which every start of it appends to.
    pub log: PathBuf,
    /// The container's process, while it runs.
    pub pid: Option<u32>,
}

impl PodTable {
    /// Records the pod `namespace/name` until the returned guard drops.
    pub fn enter(&self, namespace: &str, name: &str, entry: PodEntry) -> Entered<'_> {
        let key = (namespace.to_string(), name.to_string());
        let uid = entry.uid.clone();
        self.pods
            .lock()
            .expect("pod table")
            .insert(key.clone(), entry);
        Entered {
            table: self,
            key,
            uid,
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<PodEntry> {
        let key = (namespace.to_string(), name.to_string());
        self.pods.lock().expect("pod table").get(&key).cloned()
    }
}

/// A pod's place in the [`PodTable`], given up on drop (unless a pod of the
/// same name has taken it meanwhile).
pub struct Entered<'a> {
    table: &'a PodTable,
    key: (String, String),
    uid: String,
}

impl Entered<'_> {
    /// The container's process started (`Some`) or ended (`None`).
    pub fn set_pid(&self, pid: Option<u32>) {
        let mut pods = self.table.pods.lock().expect("pod table");
        if let Some(e) = pods.get_mut(&self.key).filter(|e| e.uid == self.uid) {
            e.pid = pid;
        }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut pods = self.table.pods.lock().expect("pod table");
        if pods.get(&self.key).is_some_and(|e| e.uid == self.uid) {
            pods.remove(&self.key);
        }
    }
}

/// Serves the kubelet's endpoints for `node` on a port of 127.0.0.1 of its
/// own; the port, and the task that serves it (aborting it ends every
/// connection it serves).
pub async fn serve(node: Arc<NodeShared>) -> (u16, JoinHandle<()>) {
    let acceptor = TlsAcceptor::from(tls_config(&node.name));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the kubelet's port");
    let port = listener.local_addr().expect("the kubelet's address").port();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((conn, _)) = accepted else {
                        continue;
                    };
                    let (acceptor, node) = (acceptor.clone(), node.clone());
                    connections.spawn(async move {
                        let _ = conn.set_nodelay(true);
                        match acceptor.accept(conn).await {
                            Ok(tls) => serve_one(tls, &node).await,
                            Err(e) => eprintln!("kubelet: TLS handshake failed: {e}"),
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    (port, task)
}

/// A self-signed certificate for 127.0.0.1 and the node's name; HTTP/1.1
/// only, which is what WebSocket upgrades and this parser speak.
fn tls_config(node: &str) -> Arc<ServerConfig> {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), node.to_string()])
        .expect("make the kubelet's certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    // The test binaries link two crypto providers: name one.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .expect("the kubelet's TLS configuration");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A request's head.
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    /// Names in lower case.
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the query parameter `name`.
    fn query<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.query
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a request's head; also what came after it (a WebSocket client may
/// send its first frames right behind its upgrade request).
async fn read_request<S: AsyncRead + Unpin>(conn: &mut S) -> Option<(Request, Vec<u8>)> {
    let (head, rest) = read_head(conn).await?;
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method,
        path: path.to_string(),
        query: form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect(),
    };
    Some((request, rest))
}

/// One request per connection.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, node: &NodeShared) {
    let Some((request, early)) = read_request(&mut conn).await else {
        return;
    };
    let path: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    match (request.method.as_str(), path.as_slice()) {
        ("GET" | "POST", ["portForward", ns, pod]) => {
            port_forward::port_forward(conn, early, &request, node, ns, pod).await
        }
        ("GET", ["containerLogs", ns, pod, container]) => {
            logs::container_logs(conn, &request, node, ns, pod, container).await
        }
        _ => {
            let message = format!(
                "the test node's kubelet serves GET /portForward/NAMESPACE/POD and \
                 GET /containerLogs/NAMESPACE/POD/CONTAINER, not {} {}",
                request.method, request.path
            );
            respond(&mut conn, 404, &message).await
        }
    }
}
