//! `GET /portForward/{namespace}/{pod}?port=N&port=M`: a WebSocket of
//! subprotocol `v4.channel.k8s.io` (or of none named, as kr8s asks), which
//! the API server passes through as it is. As in the kubelet's
//! `cri/streaming/portforward/websocket.go`, the i-th port has channel 2i
//! for data and 2i+1 for errors, every binary message starts with its
//! channel's byte, and the server first sends the port number (u16,
//! little-endian) on both channels of each port. Each port is one TCP
//! connection to the pod's address; it ends when the pod closes it, and the
//! WebSocket once every port has ended. Requests the API server turns into
//! SPDY (clients of `v2.portforward.k8s.io`, such as kubectl) are refused.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{NodeShared, Request, respond};

/// The one WebSocket subprotocol served: binary messages, each prefixed
/// with its channel.
const V4_CHANNEL: &str = "v4.channel.k8s.io";

/// The ports asked for: `port` as the API server passes them (one value
/// each), or `ports` as a client would (comma-separated).
fn requested_ports(request: &Request) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for value in request.query("port").chain(request.query("ports")) {
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("invalid port {p:?}: a number from 1 to 65535")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    // Two channels per port, each named by one byte.
    if ports.len() > 128 {
        return Err(format!("{} ports asked for; at most 128", ports.len()));
    }
    Ok(ports)
}

/// `/portForward`: the WebSocket handshake, then the forwarding.
pub(super) async fn port_forward<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    early: Vec<u8>,
    request: &Request,
    node: &NodeShared,
    ns: &str,
    pod: &str,
) {
    // SPDY names its ports in its streams rather than in the query: it is
    // refused before the query is read.
    let upgrade = request.header("upgrade").unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        let message = format!(
            "the test node's kubelet forwards ports over WebSocket only (subprotocol \
             {V4_CHANNEL}), not over {upgrade:?}: SPDY, which the API server speaks here for \
             clients of v2.portforward.k8s.io (kubectl port-forward), is not supported"
        );
        return respond(&mut conn, 400, &message).await;
    }
    let offered: Vec<&str> = request
        .header("sec-websocket-protocol")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    // A client that names no subprotocol gets the binary channels too, as
    // from the kubelet.
    let protocol = if offered.is_empty() {
        String::new()
    } else if offered.contains(&V4_CHANNEL) {
        format!("Sec-WebSocket-Protocol: {V4_CHANNEL}\r\n")
    } else {
        let message = format!(
            "the test node's kubelet speaks the WebSocket subprotocol {V4_CHANNEL} only; the \
             request offers {offered:?}"
        );
        return respond(&mut conn, 400, &message).await;
    };
    let ports = match requested_ports(request) {
        Ok(p) => p,
        Err(message) => return respond(&mut conn, 400, &message).await,
    };
    let Some(key) = request.header("sec-websocket-key") else {
        return respond(
            &mut conn,
            400,
            "a WebSocket upgrade without Sec-WebSocket-Key",
        )
        .await;
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let ws = WebSocketStream::from_partially_read(conn, early, Role::Server, None).await;
    // As the kubelet, a pod that cannot be reached is told on each port's
    // error channel, after the handshake.
    let target = match node.pods.get(ns, pod) {
        None => Err(format!("pod {ns}/{pod} is not on node {}", node.name)),
        Some(e) if e.pid.is_none() => Err(format!("pod {ns}/{pod} is not running")),
        Some(e) => Ok(e.ip),
    };
    forward(ws, target, &ports, &format!("{ns}/{pod}")).await;
}

/// A binary message on `channel`.
fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

/// Forwards each of `ports` to the pod at `target` (or says on the port's
/// error channel why not) until every port has ended or the client leaves.
async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    ws: WebSocketStream<S>,
    target: Result<Ipv4Addr, String>,
    ports: &[u16],
    pod: &str,
) {
    let (mut sink, mut incoming) = ws.split();
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i, 2 * i + 1] {
            if sink
                .send(frame(channel as u8, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (out, mut outgoing) = mpsc::channel::<Message>(64);
    // Per port, where the client's data for it goes, while it is forwarded.
    let mut to_pod: Vec<Option<mpsc::Sender<Vec<u8>>>> = Vec::new();
    let mut streams = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let data = (2 * i) as u8;
        let conn = match &target {
            Ok(ip) => TcpStream::connect((*ip, port))
                .await
                .map_err(|e| format!("error forwarding port {port} to pod {pod} ({ip}): {e}")),
            Err(e) => Err(e.clone()),
        };
        match conn {
            Ok(conn) => {
                let (tx, rx) = mpsc::channel(16);
                to_pod.push(Some(tx));
                streams.spawn(pump(conn, data, rx, out.clone()));
            }
            Err(message) => {
                eprintln!("kubelet: {message}");
                to_pod.push(None);
                let _ = out.send(frame(data + 1, message.as_bytes())).await;
            }
        }
    }
    // From here `outgoing` ends once every port's stream has.
    drop(out);
    let mut ended = false;
    while !ended {
        tokio::select! {
            message = outgoing.recv() => match message {
                Some(m) => ended = sink.send(m).await.is_err(),
                None => {
                    // Every port has ended: close, and wait for the client's
                    // answer to the close (or its leaving).
                    let _ = sink.send(Message::Close(None)).await;
                    let wait = async { while let Some(Ok(_)) = incoming.next().await {} };
                    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
                    ended = true;
                }
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 => {
                    let channel = usize::from(bytes[0]);
                    // Data on an error channel, or for a port not forwarded
                    // (any more), has nowhere to go.
                    if let Some(Some(tx)) = to_pod.get(channel / 2).filter(|_| channel % 2 == 0)
                        && tx.send(bytes[1..].to_vec()).await.is_err()
                    {
                        to_pod[channel / 2] = None;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => ended = true,
                Some(Ok(_)) => {}
            },
        }
    }
    // Sends what is still owed, such as the answer to the client's close.
    let _ = sink.close().await;
    streams.abort_all();
}

/// One forwarded port: the client's data (`from_client`) to the pod's
/// connection, and what the pod sends back to the client as messages on
/// channel `data`, until the pod ends the connection.
async fn pump(
    conn: TcpStream,
    data: u8,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    to_client: mpsc::Sender<Message>,
) {
    let _ = conn.set_nodelay(true);
    let (mut reader, mut writer) = conn.into_split();
    let upload = async move {
        while let Some(bytes) = from_client.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // The client's side has no end of its own in this protocol: the
        // port lasts until the pod's side ends.
        std::future::pending::<()>().await
    };
    let download = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.send(frame(data, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = upload => {}
        _ = download => {}
    }
}
