//! `GET /containerLogs/{namespace}/{pod}/{container}`: the container's log
//! file, every start of it, as text (`tailLines`, `limitBytes` and `follow`
//! are honoured; there are no timestamps to add).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{NodeShared, Request, respond};

/// How often a followed log is read again for what was appended.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// `/containerLogs`: the container's log, whole or its last `tailLines`
/// lines, at most `limitBytes`, and with `follow` what it appends until
/// the container stops.
pub(super) async fn container_logs<S: AsyncWrite + Unpin>(
    mut conn: S,
    request: &Request,
    node: &NodeShared,
    ns: &str,
    pod: &str,
    container: &str,
) {
    let Some(entry) = node.pods.get(ns, pod) else {
        let message = format!("pod {ns}/{pod} is not on node {}", node.name);
        return respond(&mut conn, 404, &message).await;
    };
    if entry.container != container {
        let message = format!(
            "pod {ns}/{pod} has no container {container:?} (its container is {:?})",
            entry.container
        );
        return respond(&mut conn, 404, &message).await;
    }
    let number = |name: &str| -> Result<Option<usize>, String> {
        request
            .query(name)
            .next()
            .map(|v| v.parse::<usize>())
            .transpose()
            .map_err(|e| format!("query parameter {name:?}: {e}"))
    };
    let (tail_lines, limit) = match (number("tailLines"), number("limitBytes")) {
        (Ok(t), Ok(l)) => (t, l.unwrap_or(usize::MAX)),
        (Err(m), _) | (_, Err(m)) => return respond(&mut conn, 400, &m).await,
    };
    let follow = request
        .query("follow")
        .next()
        .is_some_and(|v| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"));
    let mut file = match tokio::fs::File::open(&entry.log).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let message = format!("container {container:?} in pod {ns}/{pod} is waiting to start");
            return respond(&mut conn, 400, &message).await;
        }
        Err(e) => {
            let message = format!("{}: {e}", entry.log.display());
            return respond(&mut conn, 500, &message).await;
        }
    };
    let mut text = Vec::new();
    if let Err(e) = file.read_to_end(&mut text).await {
        let message = format!("{}: {e}", entry.log.display());
        return respond(&mut conn, 500, &message).await;
    }
    let text = match tail_lines {
        Some(n) => last_lines(&text, n),
        None => &text[..],
    };
    let mut budget = limit;
    let first = &text[..text.len().min(budget)];
    budget -= first.len();
    if !follow {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            first.len()
        );
        let _ = conn.write_all(head.as_bytes()).await;
        let _ = conn.write_all(first).await;
        let _ = conn.shutdown().await;
        return;
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if conn.write_all(head.as_bytes()).await.is_err() || chunk(&mut conn, first).await.is_err() {
        return;
    }
    while budget > 0 {
        // Whether it runs is asked before reading, so that what a stopped
        // container wrote last is read.
        let running = node
            .pods
            .get(ns, pod)
            .is_some_and(|e| e.uid == entry.uid && e.pid.is_some());
        let mut more = Vec::new();
        if file.read_to_end(&mut more).await.is_err() {
            break;
        }
        let more = &more[..more.len().min(budget)];
        budget -= more.len();
        if chunk(&mut conn, more).await.is_err() {
            return;
        }
        if !running {
            break;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let _ = conn.shutdown().await;
}

/// One chunk of a chunked body (none for no bytes: an empty chunk ends it).
async fn chunk<S: AsyncWrite + Unpin>(conn: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    conn.write_all(format!("{:x}\r\n", bytes.len()).as_bytes())
        .await?;
    conn.write_all(bytes).await?;
    conn.write_all(b"\r\n").await?;
    conn.flush().await
}

/// The last `n` lines of `text` (a final newline ends the last line).
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &text[start..]
}
