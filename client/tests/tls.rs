//! A cluster with TLS: scheduler, workers and clients present certificates
//! of the cluster's authority (made by `daskrs certs`) and check each
//! other's. Work runs, results move between workers over TLS; a plain-text
//! client is told the port takes TLS only; certificates of another
//! authority are refused, for clients, peers and workers alike; files
//! renewed in place are used for new connections without a restart.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use daskrs_client::Client;
use daskrs_proto::peer_data_client::PeerDataClient;
use daskrs_proto::tls::Tls;
use harness::graphs::check_slow_sum;
use harness::{BIN, Cluster, http_as};
use tonic::Code;

/// Runs `daskrs certs` for a cluster named `name` into `dir`.
fn certs(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(BIN)
        .args(["certs", "--cluster", name, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "daskrs certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

fn tls_arg(dir: &Path, who: &str) -> String {
    dir.join(who).display().to_string()
}

/// The sum of a counter over the lines of a Prometheus page.
fn counter(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_works_with_its_certificates_and_refuses_all_others() {
    let dirs = tempfile::tempdir().unwrap();
    let ours = certs(&dirs.path().join("ours"), "ours");
    let theirs = certs(&dirs.path().join("theirs"), "theirs");
    let scheduler_dir = tls_arg(&ours, "scheduler");
    let worker_dir = tls_arg(&ours, "worker");
    let mut cluster = Cluster::start(
        2,
        &["--tls-dir", &scheduler_dir],
        &["--tls-dir", &worker_dir],
    );
    let address = cluster.address();
    let tls = Tls::load(&ours.join("client")).unwrap();

    // Work runs, and results move between the workers, over TLS.
    let client = Client::connect_with(&address, Some(&cluster.token), Some(&tls))
        .await
        .unwrap();
    client
        .wait_for_workers(2, Duration::from_secs(30))
        .await
        .unwrap();
    check_slow_sum(&client, 64, 100, 5).await;
    let mut peer_calls = 0.0;
    for i in 0..2 {
        let port = cluster.worker_http_port(i);
        let (code, page) = http_as(port, "GET", "/metrics", "", Some(&cluster.token));
        assert_eq!(code, 200, "{page}");
        peer_calls += counter(&page, "daskrs_worker_peer_calls_total");
    }
    assert!(peer_calls > 0.0, "no result moved between the workers");

    // A plain-text client is told the port takes TLS only.
    let plain = Client::connect(&address, Some(&cluster.token))
        .await
        .unwrap()
        .info()
        .await
        .unwrap_err();
    assert!(
        plain.to_string().contains("TLS connections only"),
        "{plain}"
    );
    assert_eq!(plain.exit_code(), 2, "{plain}");

    // Another authority's client certificate: refused, and said so.
    let stranger = Tls::load(&theirs.join("client")).unwrap();
    let refused = match Client::connect_with(&address, Some(&cluster.token), Some(&stranger)).await
    {
        Err(e) => e,
        Ok(c) => c.info().await.unwrap_err(),
    };
    assert!(refused.to_string().contains("certificate"), "{refused}");
    assert_eq!(refused.exit_code(), 2, "{refused}");

    // A worker's peer port: plain text and strangers get nothing; with the
    // cluster's certificate the call reaches the store (which lacks this
    // result).
    let peer = format!("127.0.0.1:{}", cluster.worker_peer_port(0));
    let fetch = |tls: Option<Tls>| {
        let (peer, token) = (peer.clone(), cluster.token.clone());
        async move {
            let channel = daskrs_proto::net::connect(&peer, Some(&token), tls.as_ref()).await;
            let channel = match channel {
                Ok(c) => c,
                Err(e) => return Err(daskrs_core::error_chain(&e)),
            };
            let status = PeerDataClient::new(channel)
                .fetch(daskrs_proto::FetchRequest {
                    task_id: 987_654,
                    part: None,
                })
                .await
                .map(|_| ())
                .unwrap_err();
            Ok(status)
        }
    };
    let plain = fetch(None).await.unwrap();
    assert_eq!(plain.code(), Code::FailedPrecondition, "{plain:?}");
    match fetch(Some(stranger.clone())).await {
        Err(text) => assert!(text.contains("certificate"), "{text}"),
        Ok(s) => assert!(daskrs_proto::tls::refused_certificate(&s), "{s:?}"),
    }
    assert_eq!(
        fetch(Some(tls.clone())).await.unwrap().code(),
        Code::NotFound
    );

    // A worker with another authority's certificate cannot join: it stops
    // and says why.
    let out = Command::new(BIN)
        .args(["worker", "--scheduler", &address, "--name", "stranger"])
        .args(["--host", "127.0.0.1", "--port", "0", "--http-port", "0"])
        .args(["--tls-dir", &tls_arg(&theirs, "worker")])
        .env(daskrs_proto::auth::TOKEN_ENV, cluster.token.expose())
        .env("DASKRS_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("certificate"), "{said}");
    assert_eq!(client.info().await.unwrap().workers.len(), 2);

    // Renewed in place (`daskrs certs` again keeps the authority), as the
    // kubelet swaps a Secret's files: the scheduler serves the new
    // certificate on new connections, clients of the authority connect as
    // before, and open connections go on.
    let served = |tls: Tls| {
        let port = cluster.port;
        async move {
            let stream = tls.connect("127.0.0.1", port).await.unwrap();
            stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
    };
    let pem = |dir: &Path| {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_file(dir.join("tls.crt"))
            .unwrap()
            .to_vec()
    };
    let before = pem(&ours.join("scheduler"));
    assert_eq!(served(tls.clone()).await, before);
    certs(&ours, "ours");
    let after = pem(&ours.join("scheduler"));
    assert_ne!(after, before, "daskrs certs issued nothing new");
    assert_eq!(served(tls.clone()).await, after);
    let fresh = Client::connect_with(&address, Some(&cluster.token), Some(&tls))
        .await
        .unwrap();
    assert_eq!(fresh.info().await.unwrap().workers.len(), 2);
    assert_eq!(client.info().await.unwrap().workers.len(), 2);
    check_slow_sum(&client, 8, 10, 0).await;
}
