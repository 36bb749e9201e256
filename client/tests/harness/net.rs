//! The cluster network of the test node, on loopback.
//!
//! In a real cluster each pod has its own network namespace and address,
//! cluster DNS answers a Service's name with its ClusterIP, and kube-proxy
//! forwards connections to that address to a ready endpoint pod. Here:
//!
//! - each pod gets a loopback address of its own (`127.B.1.1`, `127.B.1.2`,
//!   ...), so every pod can listen on the same ports, as in a cluster;
//! - each Service gets a stable loopback address (`127.B.0.N`) that stands
//!   for its ClusterIP, and a userspace proxy there forwards each connection
//!   to a ready endpoint pod (kube-proxy's old userspace mode); it listens
//!   only while the Service has a ready endpoint, so that a connection is
//!   refused otherwise, as kube-proxy rejects it (a client that retries a
//!   refused connection, as Dask's workers do, then waits for the pod
//!   rather than failing on a connection closed once accepted);
//! - Service names in a pod's environment (`svc`, `svc.ns`, `svc.ns.svc`,
//!   `svc.ns.svc.cluster.local`) are replaced by the Service's address
//!   before the process starts, which is what a DNS lookup would answer;
//! - processes outside the cluster (the operator) reach Services through an
//!   HTTP forward proxy that resolves the same names.
//!
//! Only the Services of the node's namespace are served. The API server
//! refuses loopback addresses in Endpoints and EndpointSlices (so
//! kube-controller-manager logs `FailedToUpdateEndpoint` warnings for these
//! Services); the proxy therefore picks its endpoints itself, as the
//! EndpointSlice controller would: the ready pods that match the Service's
//! selector, on the container port its `targetPort` names.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Addresses handed out in this process, counted across every
/// `ClusterNet`, so that two never share one.
static NEXT_POD: AtomicU32 = AtomicU32::new(0);
static NEXT_SERVICE: AtomicU32 = AtomicU32::new(0);

pub struct ClusterNet {
    namespace: String,
    /// The second octet of every address handed out.
    block: u8,
    state: Mutex<NetState>,
    proxied: Mutex<Vec<Proxied>>,
}

#[derive(Default)]
struct NetState {
    services: BTreeMap<String, ServiceEntry>,
    /// The namespace's pods as last listed.
    pods: Vec<Pod>,
    /// Round-robin position per Service.
    turn: BTreeMap<String, usize>,
}

struct ServiceEntry {
    ip: Ipv4Addr,
    ports: Vec<i32>,
    service: Service,
    listeners: Vec<JoinHandle<()>>,
}

impl Drop for ServiceEntry {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

impl ClusterNet {
    pub fn new(namespace: &str) -> Arc<ClusterNet> {
        // A block of its own per test process, so two test runs on one
        // machine do not hand out the same pod addresses.
        let block = 100 + (std::process::id() % 100) as u8;
        Arc::new(ClusterNet {
            namespace: namespace.to_string(),
            block,
            state: Mutex::new(NetState::default()),
            proxied: Mutex::default(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A fresh pod address.
    pub fn allocate_pod_ip(&self) -> Ipv4Addr {
        let n = NEXT_POD.fetch_add(1, Ordering::Relaxed);
        assert!(n < 254 * 254, "the test node ran out of pod addresses");
        Ipv4Addr::new(127, self.block, 1 + (n / 254) as u8, 1 + (n % 254) as u8)
    }

    /// Takes in the namespace's Services and pods as just listed: new
    /// Services get an address, and a proxy while they have a ready
    /// endpoint; removed ones lose both.
    pub fn update(self: &Arc<Self>, services: Vec<Service>, pods: Vec<Pod>) {
        let mut st = self.state.lock().expect("net state");
        st.pods = pods;
        let names: Vec<String> = services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        st.services.retain(|name, _| names.contains(name));
        for svc in services {
            let Some(name) = svc.metadata.name.clone() else {
                continue;
            };
            // Services without a selector have no endpoints to forward to.
            let has_selector = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some();
            if !has_selector {
                continue;
            }
            let ports: Vec<i32> = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .map(|ps| ps.iter().map(|p| p.port).collect())
                .unwrap_or_default();
            let ready = has_ready_endpoint(&svc, &st.pods);
            if let Some(entry) = st.services.get_mut(&name) {
                entry.service = svc;
                if entry.ports != ports {
                    for l in entry.listeners.drain(..) {
                        l.abort();
                    }
                    entry.ports = ports;
                }
                if !ready {
                    for l in entry.listeners.drain(..) {
                        l.abort();
                    }
                } else if entry.listeners.is_empty() {
                    entry.listeners = self.listen(&name, entry.ip, &entry.ports);
                }
                continue;
            }
            let n = NEXT_SERVICE.fetch_add(1, Ordering::Relaxed) + 1;
            assert!(n < 255, "the test node ran out of Service addresses");
            let ip = Ipv4Addr::new(127, self.block, 0, n as u8);
            let listeners = if ready {
                self.listen(&name, ip, &ports)
            } else {
                Vec::new()
            };
            st.services.insert(
                name,
                ServiceEntry {
                    ip,
                    ports,
                    service: svc,
                    listeners,
                },
            );
        }
    }

    fn listen(self: &Arc<Self>, service: &str, ip: Ipv4Addr, ports: &[i32]) -> Vec<JoinHandle<()>> {
        ports
            .iter()
            .filter_map(|&port| {
                let addr = SocketAddr::new(IpAddr::V4(ip), u16::try_from(port).ok()?);
                let std_listener = match std::net::TcpListener::bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("net: Service {service} cannot listen on {addr}: {e}");
                        return None;
                    }
                };
                std_listener.set_nonblocking(true).expect("nonblocking");
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                let net = self.clone();
                let service = service.to_string();
                Some(tokio::spawn(async move {
                    loop {
                        let Ok((conn, _)) = listener.accept().await else {
                            continue;
                        };
                        let net = net.clone();
                        let service = service.clone();
                        tokio::spawn(async move {
                            match net.endpoint(&service, port) {
                                Some(target) => {
                                    if let Ok(mut up) = TcpStream::connect(target).await {
                                        let mut conn = conn;
                                        let _ = up.set_nodelay(true);
                                        let _ = conn.set_nodelay(true);
                                        let _ =
                                            tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                                    }
                                }
                                // No ready endpoint any more (the listener
                                // closes at the next update): it ends.
                                None => drop(conn),
                            }
                        });
                    }
                }))
            })
            .collect()
    }

    /// A ready endpoint of `service` for its port `port`: the pod's address
    /// and the target port, taking turns among the ready pods.
    pub fn endpoint(&self, service: &str, port: i32) -> Option<SocketAddr> {
        let mut st = self.state.lock().expect("net state");
        let entry = st.services.get(service)?;
        let spec = entry.service.spec.as_ref()?;
        let selector = spec.selector.as_ref()?;
        let sport = spec.ports.as_ref()?.iter().find(|p| p.port == port)?;
        let mut ready: Vec<(String, SocketAddr)> = st
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .filter(|p| pod_ready(p))
            .filter_map(|p| {
                let ip: IpAddr = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
                let target = match &sport.target_port {
                    None => port,
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(name)) => container_port(p, name)?,
                };
                let name = p.metadata.name.clone().unwrap_or_default();
                Some((name, SocketAddr::new(ip, u16::try_from(target).ok()?)))
            })
            .collect();
        if ready.is_empty() {
            return None;
        }
        ready.sort();
        let turn = st.turn.entry(service.to_string()).or_insert(0);
        *turn = turn.wrapping_add(1);
        Some(ready[*turn % ready.len()].1)
    }

    /// The Service address a DNS lookup of `host` answers, for a pod of
    /// this namespace: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
    pub fn resolve(&self, host: &str) -> Option<Ipv4Addr> {
        let host = host.trim_end_matches('.');
        let ns = &self.namespace;
        let name = [
            format!(".{ns}.svc.cluster.local"),
            format!(".{ns}.svc"),
            format!(".{ns}"),
        ]
        .iter()
        .find_map(|suffix| host.strip_suffix(suffix.as_str()))
        .unwrap_or(host);
        let st = self.state.lock().expect("net state");
        st.services.get(name).map(|e| e.ip)
    }

    /// `value` with every Service name in it replaced by the Service's
    /// address. Errs naming a `*.svc` name that does not resolve (yet):
    /// the pod waits for it, as its process would fail to look it up.
    pub fn rewrite(&self, value: &str) -> Result<String, String> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while !rest.is_empty() {
            let end = rest.find(|c: char| !is_host_char(c)).unwrap_or(rest.len());
            if end == 0 {
                let c = rest.chars().next().expect("not empty");
                out.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let token = &rest[..end];
            match self.resolve(token) {
                Some(ip) if token.chars().any(|c| c.is_ascii_alphabetic()) => {
                    out.push_str(&ip.to_string())
                }
                _ => {
                    let t = token.trim_end_matches('.');
                    if t.ends_with(".svc") || t.ends_with(".svc.cluster.local") {
                        return Err(format!("the Service name {t} does not resolve yet"));
                    }
                    out.push_str(token);
                }
            }
            rest = &rest[end..];
        }
        Ok(out)
    }

    /// Serves an HTTP forward proxy (what `HTTP_PROXY` points at) that
    /// resolves Service names as cluster DNS would, for processes that run
    /// outside the cluster but call Services by name.
    pub async fn serve_http_proxy(self: &Arc<Self>) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let net = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let net = net.clone();
                tokio::spawn(async move { net.proxy_one(conn).await });
            }
        });
        (addr, task)
    }

    async fn proxy_one(&self, mut conn: TcpStream) {
        let Some((head, early)) = read_head(&mut conn).await else {
            return;
        };
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let request = lines.next().unwrap_or_default();
        let mut parts = request.split(' ');
        let (method, uri, version) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or("HTTP/1.1"),
        );
        let Some(rest) = uri.strip_prefix("http://") else {
            respond(&mut conn, 400, "only http:// URLs are proxied").await;
            return;
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().unwrap_or(80)),
            None => (authority, 80),
        };
        let ip: IpAddr = match self.resolve(host) {
            Some(ip) => IpAddr::V4(ip),
            None => match host.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    respond(&mut conn, 502, &format!("cannot resolve {host}")).await;
                    return;
                }
            },
        };
        let mut up = match TcpStream::connect((ip, port)).await {
            Ok(s) => s,
            Err(e) => {
                respond(&mut conn, 502, &format!("{host}:{port}: {e}")).await;
                return;
            }
        };
        // One request per connection: the hop-by-hop headers are dropped
        // and both ends are told to close after the answer.
        let mut out = format!("{method} {path} {version}\r\n");
        for line in lines.filter(|l| !l.is_empty()) {
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !matches!(
                name.as_str(),
                "connection" | "proxy-connection" | "keep-alive" | "proxy-authorization"
            ) {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        if up.write_all(out.as_bytes()).await.is_err() || up.write_all(&early).await.is_err() {
            return;
        }
        let (mut cr, mut cw) = conn.split();
        let (mut ur, mut uw) = up.split();
        // The request body may end before the answer does: the exchange is
        // over when the answer is.
        let upload = async {
            let _ = tokio::io::copy(&mut cr, &mut uw).await;
            std::future::pending::<()>().await
        };
        // The answer passes through as it comes; its beginning is kept for
        // the record.
        let download = async {
            let mut seen = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if seen.len() < 64 * 1024 {
                            seen.extend_from_slice(&buf[..n]);
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = cw.shutdown().await;
            seen
        };
        let seen = tokio::select! {
            _ = upload => Vec::new(),
            seen = download => seen,
        };
        let answer = String::from_utf8_lossy(&seen);
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok());
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        self.proxied.lock().expect("proxied").push(Proxied {
            method: method.to_string(),
            url: uri.to_string(),
            status,
            body,
        });
    }

    /// The requests the HTTP proxy has forwarded, oldest first.
    pub fn proxied(&self) -> Vec<Proxied> {
        self.proxied.lock().expect("proxied").clone()
    }
}

/// One request through the HTTP proxy, and the answer it got.
#[derive(Clone, Debug)]
pub struct Proxied {
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub body: String,
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.'
}

/// Reads an HTTP/1.1 request's head, up to and including its blank line,
/// and what came after it in the same reads (a body, or a WebSocket
/// client's first frames). None when the connection ends first, or the
/// head passes 64 KiB.
pub async fn read_head<S: AsyncRead + Unpin>(conn: &mut S) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = head.split_off(i + 4);
            return Some((head, rest));
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
}

/// A whole answer in plain text; the connection closes after it.
pub async fn respond<S: AsyncWrite + Unpin>(conn: &mut S, status: u16, message: &str) {
    let body = format!("{message}\n");
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        502 => "Bad Gateway",
        _ => "Internal Server Error",
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(answer.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Whether a pod that the Service selects is ready and not being deleted.
fn has_ready_endpoint(svc: &Service, pods: &[Pod]) -> bool {
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .any(pod_ready)
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The number of the container port called `name`.
pub fn container_port(pod: &Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// A plain HTTP GET with a timeout: the status code and the body, or None
/// when nothing answers in time.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let get = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.ok()?;
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(timeout, get).await.ok().flatten()
}
