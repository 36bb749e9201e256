//! The scheduler's dashboard, rendered by a real browser (Debian's Chromium,
//! headless) while graphs and queries run: once as the DOM after a few
//! seconds of the page's own polling, and once driven over the DevTools
//! protocol while a Python client's graph and SQL query run, checking each
//! picture as it changes and saving screenshots of them under
//! `target/screenshots/`.

mod harness;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use daskrs_client::Graph;
use harness::browser::{Browser, Page, chromium, headless_args, screenshot_dir};
use harness::graphs::{check_slow_sum, range, sleep, slow_sum, start_graph};
use harness::{Cluster, pod_env};

/// The page's DOM after its script has polled the scheduler for `budget_ms`
/// of the browser's virtual time.
fn rendered(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let out = Command::new(chromium())
        .args(headless_args(profile.path()))
        .args([
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
    let client = cluster.client(1).await;
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

    // The task stream: each task run once, on the worker's one thread,
    // within the scheduler's clock; a reader asking from the last record on
    // gets nothing more.
    check_slow_sum(&client, 4, 10, 20).await;
    let json = |path: &str| {
        let (code, body) = cluster.http_get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let stream = json("/api/v1/task-stream");
    let records = stream["records"].as_array().unwrap();
    let keys: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(records.len(), keys.len(), "each run once: {stream}");
    for k in ["x0", "s3", "p2"] {
        assert!(keys.contains(k), "{k}: {stream}");
    }
    let worker = stream["workers"][0]["id"].clone();
    for r in records {
        assert_eq!((&r["worker"], &r["thread"]), (&worker, &0.into()), "{r}");
        let (start, stop) = (r["start"].as_f64().unwrap(), r["stop"].as_f64().unwrap());
        assert!(
            0.0 < start && start <= stop && stop <= stream["now"].as_f64().unwrap(),
            "{r}"
        );
    }
    let sleeps = records.iter().find(|r| r["key"] == "s1").unwrap();
    assert_eq!(sleeps["prefix"], "s1");
    let ran = sleeps["stop"].as_f64().unwrap() - sleeps["start"].as_f64().unwrap();
    assert!(ran >= 0.02, "a 20 ms sleep ran {ran} s");
    let last = stream["last"].as_u64().unwrap();
    let again = json(&format!("/api/v1/task-stream?since={last}"));
    assert_eq!(again["records"], serde_json::json!([]), "{again}");
    let (code, body) = cluster.http_get("/api/v1/task-stream?since=soon");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("since"), "names the parameter: {body}");

    // Memory: the worker's heartbeats, with its limit and pause threshold.
    let memory = json("/api/v1/memory");
    let w = &memory["workers"][0];
    assert!(
        w["samples"].as_array().is_some_and(|s| !s.is_empty()),
        "{memory}"
    );
    let (limit, pause) = (
        w["memory_limit"].as_u64().unwrap(),
        w["pause_bytes"].as_u64().unwrap(),
    );
    assert!(0 < pause && pause < limit, "{memory}");
}

/// The Python client of `client/tests/dashboard/watched.py`, and the lines
/// it says as it goes.
struct Watched {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    gates: tempfile::TempDir,
    stderr: PathBuf,
}

impl Watched {
    fn start(python: &Path, cluster: &Cluster) -> Watched {
        let gates = tempfile::tempdir().unwrap();
        let stderr = gates.path().join("stderr");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/watched.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(cluster.address())
            .arg(cluster.token.expose())
            .arg(gates.path())
            .env_remove("DASKRS_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("the Python client starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watched {
            child,
            lines,
            gates,
            stderr,
        }
    }

    /// Waits until the script says `line`.
    fn expect(&mut self, line: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(180)) {
                Ok(l) if l == line => return,
                Ok(_) => continue,
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    panic!(
                        "the Python client did not say {line:?} ({e}; {status:?}):\n{}",
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Lets the script's tasks waiting at `gate` go on.
    fn open(&self, gate: &str) {
        std::fs::write(self.gates.path().join(gate), b"").unwrap();
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the Python client failed ({status}):\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }
}

async fn number(browser: &mut Browser, page: &Page, expression: &str) -> u64 {
    let v = browser.eval(page, &format!("Number({expression})")).await;
    v.as_f64()
        .unwrap_or_else(|| panic!("{expression} is not a number: {v}")) as u64
}

/// A picture's count of redraws that changed it (see `drawn` in the page).
fn updates(picture: &str) -> String {
    format!("document.getElementById({picture:?}).dataset.updates")
}

fn items(picture: &str) -> String {
    format!("document.getElementById({picture:?}).dataset.drawn")
}

const WAIT: Duration = Duration::from_secs(90);

/// A browser window `height` pixels high on the cluster's dashboard, logged
/// in by the link's token.
async fn open_dashboard(cluster: &Cluster, height: u32) -> (Browser, Page) {
    let mut browser = Browser::launch(1400, height).await;
    let url = format!(
        "http://127.0.0.1:{}/?token={}",
        cluster.http_port,
        cluster.token.expose()
    );
    let page = browser.open(&url).await;
    (browser, page)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_picture_follows_a_python_graph_and_a_sql_query() {
    let python = pod_env::test_python();
    let python_arg = python.display().to_string();
    let cluster = Cluster::start(3, &[], &["--python", &python_arg]);
    let _client = cluster.client(3).await;
    let mut watched = Watched::start(&python, &cluster);
    watched.expect("graph running");

    let (mut browser, page) = open_dashboard(&cluster, 1000).await;
    let b = &mut browser;
    b.wait_for(&page, "document.body.dataset.updated", WAIT)
        .await;

    // Before the gate: the first graph's bars, the squares waiting.
    b.wait_for(&page, &format!("{} > 0", items("stream")), WAIT)
        .await;
    let row =
        |prefix: &str| format!("document.querySelector('#progress [data-prefix=\"{prefix}\"]')");
    b.wait_for(&page, &row("slow_square"), WAIT).await;
    let cells = |prefix: &str| {
        format!(
            "[...{}.cells].slice(2).map(c => Number(c.textContent))",
            row(prefix)
        )
    };
    // done, running, waiting, erred, tasks
    let squares = b.eval(&page, &cells("slow_square")).await;
    assert_eq!(
        squares[0], 0,
        "no square is done before the gate: {squares}"
    );
    assert!(squares[4].as_u64() > Some(0), "{squares}");
    let bars = number(b, &page, &items("stream")).await;
    let stream_updates = number(b, &page, &updates("stream")).await;
    let progress_updates = number(b, &page, &updates("progress")).await;

    watched.open("graph");
    // The squares run: new bars, and their progress moves.
    b.wait_for(
        &page,
        &format!(
            "{} > {bars} && {} > {stream_updates}",
            items("stream"),
            updates("stream")
        ),
        WAIT,
    )
    .await;
    b.wait_for(
        &page,
        &format!(
            "{} > {progress_updates} && {}[0] > 0",
            updates("progress"),
            cells("slow_square")
        ),
        WAIT,
    )
    .await;
    watched.expect("graph done");
    let done = cells("slow_square");
    b.wait_for(&page, &format!("{done}[0] == {done}[4]"), WAIT)
        .await;
    let shots = screenshot_dir();
    b.screenshot(&page, "#stream", &shots.join("dashboard-task-stream.png"))
        .await;
    b.screenshot(&page, "#progress", &shots.join("dashboard-progress.png"))
        .await;

    // Hovering a bar names its task, its duration and its worker. Redraws
    // wait while the pointer is on the stream, so the bar stays put.
    let canvas = "document.getElementById('stream-canvas').getBoundingClientRect()";
    let corner = b
        .eval(
            &page,
            &format!("(() => {{ const r = {canvas}; return [r.left, r.top]; }})()"),
        )
        .await;
    let (left, top) = (corner[0].as_f64().unwrap(), corner[1].as_f64().unwrap());
    b.mouse_move(&page, left + 2.0, top + 2.0).await;
    // A bar wide enough that the pointer at its middle is on it alone, and
    // where it is on the page, read together.
    let bar = b
        .eval(
            &page,
            &format!(
                "(() => {{ const r = {canvas};
                   const b = stream.bars.find(b => b.r.kind === 'task' && b.r.prefix === 'slow_square' && b.x1 - b.x0 >= 6);
                   const name = stream.workers.find(w => w.id === b.r.worker).name;
                   return [r.left + (b.x0 + b.x1) / 2, r.top + (b.y0 + b.y1) / 2, b.r.key, name]; }})()"
            ),
        )
        .await;
    let (x, y) = (bar[0].as_f64().unwrap(), bar[1].as_f64().unwrap());
    let (key, worker) = (bar[2].as_str().unwrap(), bar[3].as_str().unwrap());
    b.mouse_move(&page, x, y).await;
    let tip = b
        .eval(&page, "document.getElementById('stream-tip').textContent")
        .await;
    let tip = tip.as_str().unwrap_or_default().to_string();
    let lines: Vec<&str> = tip.lines().collect();
    assert_eq!(lines.first(), Some(&key), "{tip:?}");
    // "<duration> <unit> on <worker>, thread 0"
    let ran = lines.get(1).copied().unwrap_or_default();
    let unit = ran.split(' ').nth(1).unwrap_or_default();
    assert!(
        ran.ends_with(&format!(" on {worker}, thread 0"))
            && ["µs", "ms", "s", "min"].contains(&unit),
        "duration, worker and thread: {tip:?}"
    );
    b.screenshot(
        &page,
        "#stream",
        &shots.join("dashboard-task-stream-hover.png"),
    )
    .await;
    b.mouse_move(&page, 1.0, 1.0).await;

    // Memory: a chart per worker, with a sample per heartbeat.
    b.wait_for(
        &page,
        "document.querySelectorAll('#memory figure canvas').length == 3",
        WAIT,
    )
    .await;
    let memory_updates = number(b, &page, &updates("memory")).await;
    let samples = number(b, &page, &items("memory")).await;
    b.wait_for(
        &page,
        &format!(
            "{} > {memory_updates} && {} > {samples}",
            updates("memory"),
            items("memory")
        ),
        WAIT,
    )
    .await;
    let caption = b
        .eval(
            &page,
            "document.querySelector('#memory figcaption').textContent",
        )
        .await;
    assert!(
        caption
            .as_str()
            .is_some_and(|c| c.contains("managed") && c.contains("limit")),
        "{caption}"
    );
    b.screenshot(&page, "#memory", &shots.join("dashboard-memory.png"))
        .await;

    // SQL: the query's stages as planned, waiting behind the held threads.
    watched.expect("sql running");
    b.wait_for(
        &page,
        "document.querySelector('#sql [data-stage]') && document.querySelector('#sql h3').textContent.includes('running')",
        WAIT,
    )
    .await;
    let plan = b
        .eval(
            &page,
            "document.querySelector('#sql [data-stage=\"0\"] td.plan').textContent",
        )
        .await;
    assert!(
        plan.as_str().is_some_and(|p| p.contains("reads table t")),
        "stage 0 reads the table: {plan}"
    );
    let sql_updates = number(b, &page, &updates("sql")).await;
    b.screenshot(&page, "#sql", &shots.join("dashboard-sql-waiting.png"))
        .await;
    watched.open("sql");
    b.wait_for(
        &page,
        &format!(
            "{} > {sql_updates} && document.querySelector('#sql h3').textContent.includes('finished')",
            updates("sql")
        ),
        WAIT,
    )
    .await;
    // Every stage's tasks are done, and the stream has the stages' bars.
    let stages = b
        .eval(
            &page,
            "[...document.querySelectorAll('#sql [data-stage]')].map(r => [Number(r.cells[3].textContent), Number(r.cells[6].textContent)])",
        )
        .await;
    for s in stages.as_array().unwrap() {
        assert_eq!(s[0], s[1], "a stage's tasks are all done: {stages}");
    }
    b.wait_for(
        &page,
        "stream.records.some(r => r.kind === 'task' && /\\/s0$/.test(r.prefix))",
        WAIT,
    )
    .await;
    b.screenshot(&page, "#sql", &shots.join("dashboard-sql.png"))
        .await;
    watched.expect("sql done");
    watched.open("end");
    watched.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn spills_are_marked_across_the_workers_lanes() {
    // 4 MB results on a worker whose results may hold 6 MiB: every new one
    // sends an older one to disk.
    let cluster = Cluster::start(
        1,
        &[],
        &[
            "--memory-limit",
            "10MiB",
            "--pause-on-process-memory",
            "false",
        ],
    );
    let client = cluster.client(1).await;
    let mut tasks: Vec<daskrs_core::TaskSpec> = (0..5)
        .map(|i| {
            daskrs_core::TaskSpec::new(format!("blob-{i}"), "blob").payload(r#"{"bytes": 4000000}"#)
        })
        .collect();
    let blobs: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
    // A task after them all that outlasts the test holds the graph, and its
    // results, open.
    tasks.push(
        daskrs_core::TaskSpec::new("gate", "sleep")
            .payload(r#"{"ms": 600000}"#)
            .deps(blobs.clone()),
    );
    let graph = Graph {
        name: "spilling".into(),
        outputs: blobs.into_iter().chain(["gate".to_string()]).collect(),
        tasks,
    };
    let run = start_graph(&client, graph).await;

    let (mut browser, page) = open_dashboard(&cluster, 600).await;
    // Heartbeats carry the spills: at least three results went to disk, and
    // each spill is drawn.
    let spilled = "stream.records.filter(r => r.kind === 'spill')";
    browser
        .wait_for(
            &page,
            &format!(
                "{spilled}.reduce((a, r) => a + r.nbytes, 0) >= 3 * 4000000
                 && stream.bars.filter(b => b.r.kind === 'spill').length == {spilled}.length
                 && stream.bars.some(b => b.r.prefix === 'blob')"
            ),
            WAIT,
        )
        .await;
    browser
        .screenshot(
            &page,
            "#stream",
            &screenshot_dir().join("dashboard-task-stream-spills.png"),
        )
        .await;
    // Its memory is near its limit: the chart draws the limit and the pause
    // threshold with the bytes in memory and on disk.
    browser
        .wait_for(
            &page,
            "document.querySelector('#memory figcaption')?.textContent.match(/, [1-9][0-9.]* MiB spilled/)
             && document.querySelector('#memory figure').dataset.limit === 'drawn'",
            WAIT,
        )
        .await;
    browser
        .screenshot(
            &page,
            "#memory",
            &screenshot_dir().join("dashboard-memory-limit.png"),
        )
        .await;
    assert!(
        !run.is_finished(),
        "the graph ended before the page was read"
    );
    run.abort();
}
