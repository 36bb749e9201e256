//! The scheduler's dashboard, rendered by a real browser (Debian's Chromium,
//! headless) while a graph runs.

mod harness;

use std::process::Command;

use daskrs_client::Graph;
use harness::Cluster;
use harness::graphs::{range, sleep, slow_sum, start_graph};

fn chromium() -> String {
    let path = std::env::var("DASKRS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "no browser at {path}: run scripts/install-chromium.sh (or set DASKRS_CHROMIUM)"
    );
    path
}

/// The page's DOM after its script has polled the scheduler for `budget_ms`
/// of the browser's virtual time.
fn rendered(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_workers_and_a_running_graph() {
    let cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let (mut tasks, root, _) = slow_sum(40, 10, 250);
    // A task that outlasts any page load keeps the graph running until the
    // test lets it go.
    tasks.push(range("gate-input", 0, 1));
    tasks.push(sleep("gate", 600_000, "gate-input"));
    let graph = Graph {
        name: "nightly <rollup>".into(),
        tasks,
        outputs: vec![root, "gate".into()],
    };
    let run = start_graph(&client, graph).await;

    let url = format!(
        "http://127.0.0.1:{}/?token={}",
        cluster.http_port,
        cluster.token.expose()
    );
    let dom = tokio::task::spawn_blocking(move || rendered(&url, 3000))
        .await
        .unwrap();
    assert!(
        !run.is_finished(),
        "the graph ended before the page was read"
    );
    // The script ran and reached the API.
    assert!(dom.contains("data-updated="), "{dom}");
    assert!(
        dom.contains(r#"<div id="state" class=""></div>"#),
        "the page shows an error: {dom}"
    );
    assert!(dom.contains("2 workers, 2 threads"), "{dom}");
    for w in &cluster.worker_names {
        assert!(dom.contains(&format!("data-worker=\"{w}\"")), "{w}: {dom}");
    }
    // The graph, with its name shown as text, and its progress bar.
    assert!(dom.contains("data-graph=\"1\""), "{dom}");
    assert!(dom.contains("nightly &lt;rollup&gt;"), "{dom}");
    assert!(dom.contains("class=\"bar\""), "{dom}");
    assert!(dom.contains("data-state=\"processing\""), "{dom}");
    // Letting go of the graph ends it.
    run.abort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.info().await.unwrap().graphs != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the graph was not let go of"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Idle, the page says so.
    let url = format!(
        "http://127.0.0.1:{}/?token={}",
        cluster.http_port,
        cluster.token.expose()
    );
    let idle = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || rendered(&url, 1500))
            .await
            .unwrap()
    };
    assert!(idle.contains("no graphs running"), "{idle}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_api_and_page_are_served() {
    let cluster = Cluster::start(1, &[], &[]);
    let _client = cluster.client(1).await;
    let (code, page) = cluster.http_get("/");
    assert_eq!(code, 200);
    assert!(page.contains("/api/v1/status"), "{page}");
    let (code, body) = cluster.http_get("/api/v1/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["workers"][0]["name"], "w0");
    assert_eq!(status["graphs"].as_array().map(Vec::len), Some(0));
    assert!(status["tasks"]["processing"].is_u64(), "{status}");
    assert!(status["totals"]["tasks_finished"].is_u64(), "{status}");
}
