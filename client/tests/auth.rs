//! A cluster with a token: every port refuses calls without it or with a
//! wrong one, and says which; the right one is served; probes stay open;
//! a worker with the wrong token cannot join.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use daskrs_client::Client;
use daskrs_proto::auth::{TOKEN_ENV, Token};
use daskrs_proto::peer_data_client::PeerDataClient;
use daskrs_proto::worker_control_client::WorkerControlClient;
use daskrs_proto::worker_message::Msg as Up;
use harness::{BIN, Cluster, http_as};
use tonic::Code;

const MISSING: &str = "requires a token";
const WRONG: &str = "wrong for this daskrs cluster";

/// A raw HTTP/1.1 exchange: the whole response, headers included.
fn exchange(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn register() -> daskrs_proto::WorkerBatch {
    daskrs_proto::worker_batch(vec![Up::Register(daskrs_proto::Register {
        name: "intruder".into(),
        address: "127.0.0.1:1".into(),
        nthreads: 1,
        ..Default::default()
    })])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_refuses_a_missing_or_wrong_token_and_serves_the_right_one() {
    let mut cluster = Cluster::start(1, &[], &[]);
    let client = cluster.client(1).await;
    let wrong = Token::parse("not-the-token", "test").unwrap();
    let cases = [(None, MISSING), (Some(&wrong), WRONG)];
    let address = cluster.address();

    // gRPC, the client service: refused with the reason, served with the token.
    for (token, says) in cases {
        let c = Client::connect(&address, token).await.unwrap();
        let e = c.info().await.unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    assert_eq!(client.info().await.unwrap().workers.len(), 1);

    // gRPC, the workers' service: a worker that cannot present the token is
    // refused at registration.
    for (token, says) in cases {
        let channel = daskrs_proto::net::connect(&address, token, None)
            .await
            .unwrap();
        let e = WorkerControlClient::new(channel)
            .attach(futures::stream::iter(vec![register()]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(says), "{}", e.message());
    }

    // gRPC, a worker's peer data service: nothing is fetched without the
    // token; with it, the call reaches the store (which lacks this result).
    let peer = format!("127.0.0.1:{}", cluster.worker_peer_port(0));
    let fetch = |token: Option<Token>| {
        let peer = peer.clone();
        async move {
            let channel = daskrs_proto::net::connect(&peer, token.as_ref(), None)
                .await
                .unwrap();
            PeerDataClient::new(channel)
                .fetch(daskrs_proto::FetchRequest {
                    task_id: 987_654,
                    part: None,
                })
                .await
                .map(|_| ())
                .unwrap_err()
        }
    };
    for (token, says) in cases {
        let e = fetch(token.cloned()).await;
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(says), "{}", e.message());
    }
    assert_eq!(
        fetch(Some(cluster.token.clone())).await.code(),
        Code::NotFound
    );

    // HTTP, scheduler and worker: probes open, the rest needs the token.
    let worker_http = cluster.worker_http_port(0);
    for (port, paths) in [
        (
            cluster.http_port,
            &[
                "/api/v1/status",
                "/api/v1/workers",
                "/api/v1/adaptive",
                "/metrics",
            ][..],
        ),
        (worker_http, &["/metrics"][..]),
    ] {
        for probe in ["/health", "/ready"] {
            assert_eq!(http_as(port, "GET", probe, "", None).0, 200, "{probe}");
        }
        for path in paths {
            for (token, says) in cases {
                let (code, body) = http_as(port, "GET", path, "", token);
                assert_eq!(code, 401, "{path}: {body}");
                assert!(body.contains(says), "{path}: {body}");
            }
            let (code, body) = http_as(port, "GET", path, "", Some(&cluster.token));
            assert_eq!(code, 200, "{path}: {body}");
        }
    }
    let (code, body) = http_as(
        cluster.http_port,
        "POST",
        "/api/v1/retire",
        r#"{"count": 1}"#,
        None,
    );
    assert_eq!((code, body.contains(MISSING)), (401, true), "{body}");
    assert_eq!(client.info().await.unwrap().workers.len(), 1);

    // The dashboard in a browser: a login form, then a cookie.
    let port = cluster.http_port;
    let get = |path: &str, cookie: &str| {
        exchange(
            port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{cookie}\r\n"
            ),
        )
    };
    let page = get("/", "");
    assert!(page.starts_with("HTTP/1.1 401"), "{page}");
    assert!(
        page.contains(r#"<form method="post" action="/login">"#),
        "{page}"
    );
    let post = |token: &str| {
        let body = format!("token={token}");
        exchange(
            port,
            &format!(
                "POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let refused = post("nope");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("That token is wrong"), "{refused}");
    for answer in [
        post(cluster.token.expose()),
        get(&format!("/?token={}", cluster.token.expose()), ""),
    ] {
        assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
        assert!(
            answer.to_lowercase().contains("location: /\r\n"),
            "{answer}"
        );
        // A digest of the token, named for this port.
        let cookie = format!(
            "daskrs_token_{port}={}; Path=/; HttpOnly; SameSite=Strict",
            cluster.token.cookie_value()
        );
        assert!(answer.contains(&cookie), "{answer}");
        assert!(!answer.contains(cluster.token.expose()), "{answer}");
    }
    let cookie = format!(
        "Cookie: daskrs_token_{port}={}\r\n",
        cluster.token.cookie_value()
    );
    let page = get("/", &cookie);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("/api/v1/status"), "{page}");
    let status = get("/api/v1/status", &cookie);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let bad_cookie = get(
        "/api/v1/status",
        &format!("Cookie: daskrs_token_{port}=nope\r\n"),
    );
    assert!(
        bad_cookie.starts_with("HTTP/1.1 401") && bad_cookie.contains(WRONG),
        "{bad_cookie}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_the_wrong_token_is_refused_and_says_why() {
    let cluster = Cluster::start(0, &[], &[]);
    let client = cluster.client(0).await;
    let mut worker = harness::Proc {
        child: Command::new(BIN)
            .args([
                "worker",
                "--scheduler",
                &cluster.address(),
                "--name",
                "intruder",
            ])
            .args(["--host", "127.0.0.1", "--port", "0", "--http-port", "0"])
            .arg("--local-dir")
            .arg(cluster.dir.path())
            .env(TOKEN_ENV, "not-the-token")
            .env("DASKRS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    };
    // It stops at once, saying why: waiting would not help.
    let mut stderr = String::new();
    worker
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = worker.child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the scheduler refused this worker") && stderr.contains(WRONG),
        "{stderr}"
    );
    // Refused at registration: the scheduler never counted it.
    let info = client.info().await.unwrap();
    assert!(info.workers.is_empty(), "{:?}", info.workers);
}
