//! Graphs run on a scheduler and workers started as separate processes.

mod harness;

use std::time::Duration;

use daskrs_client::{Error, Graph, TaskFailure};
use daskrs_core::TaskSpec;
use harness::graphs::{check_slow_sum, int, ints, range, rooted, slow_sum, start_graph};
use harness::{Cluster, submit};

#[tokio::test(flavor = "multi_thread")]
async fn diamond_tree_and_wide_graphs_give_the_right_answers() {
    let cluster = Cluster::start(3, &[], &[]);
    let client = cluster.client(3).await;

    // Diamond: x = 0..10; y = x*x; z = x+1; d = sum(y) + sum(z) through `add`.
    let diamond = Graph {
        tasks: vec![
            range("x", 0, 10),
            TaskSpec::new("y", "mul").deps(["x", "x"]),
            TaskSpec::new("z", "add").deps(["x", "one"]),
            TaskSpec::new("one", "literal").payload(r#"{"values": [1]}"#),
            TaskSpec::new("sy", "sum").deps(["y"]),
            TaskSpec::new("sz", "sum").deps(["z"]),
            TaskSpec::new("d", "add").deps(["sy", "sz"]),
        ],
        outputs: vec!["d".into(), "z".into()],
        ..Graph::default()
    };
    let out = client.compute(diamond, |_| {}).await.unwrap();
    assert_eq!(out[0].key, "d");
    assert_eq!(int(&out[0]), 285 + 55);
    assert_eq!(ints(&out[1]), (1..=10).collect::<Vec<_>>());

    // Tree: 512 chunks of 1000 integers summed pairwise.
    check_slow_sum(&client, 512, 1000, 0).await;

    // Wide: 3000 independent tasks, all wanted.
    let tasks: Vec<TaskSpec> = (0..3000)
        .map(|i| range(&format!("r{i}"), i, i + 2))
        .collect();
    let out = client
        .compute(
            Graph {
                tasks,
                ..Graph::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 3000);
    for o in &out {
        let i: i64 = o.key[1..].parse().unwrap();
        assert_eq!(ints(o), vec![i, i + 1]);
    }

    // Every result was released with its graph.
    let info = client.info().await.unwrap();
    let held: u64 = info.workers.iter().map(|w| w.held_results).sum();
    assert_eq!(held, 0, "results left on workers after their graphs ended");
    assert_eq!(info.graphs, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_clients_run_graphs_at_once() {
    let cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let mut runs = Vec::new();
    for c in 0..8i64 {
        let client = client.clone();
        runs.push(tokio::spawn(async move {
            check_slow_sum(&client, 16 + c as usize, 100 + c, 1).await;
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

/// Tasks that wait for a worker are assigned the moment one registers, so
/// they reach it in the same batch as its welcome; none may be dropped.
#[tokio::test(flavor = "multi_thread")]
async fn workers_joining_while_tasks_wait_run_them() {
    let mut cluster = Cluster::start(0, &[], &[]);
    let client = cluster.client(0).await;
    let (tasks, root, want) = slow_sum(24, 100, 100);
    let graph = rooted(tasks, root);
    // The graph is queued with nobody to run it.
    let run = start_graph(&client, graph).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!run.is_finished(), "the graph finished without workers");
    // One worker joins to a full queue, and a second while the first works.
    cluster.add_worker(&[]);
    client
        .wait_for_workers(1, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.add_worker(&[]);
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the graph never finished: tasks sent to a joining worker were lost")
        .unwrap()
        .unwrap();
    assert_eq!(int(&out[0]), want);
    // Counts arrive with heartbeats.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let workers = client.info().await.unwrap().workers;
        if workers.len() == 2 && workers.iter().all(|w| w.executed > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both workers should have run tasks: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_command_prints_results_and_json() {
    let cluster = Cluster::start(2, &[], &[]);
    cluster.client(2).await;
    let file = cluster.dir.path().join("g.json");
    std::fs::write(
        &file,
        r#"{"tasks": [
            {"key": "x", "kind": "range", "args": {"start": 0, "stop": 100}},
            {"key": "y", "kind": "mul", "deps": ["x", "x"]},
            {"key": "total", "kind": "sum", "deps": ["y"], "retries": 2}
        ], "outputs": ["total"]}"#,
    )
    .unwrap();
    let out = submit(&cluster.address(), Some(&cluster.token), &file, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "total = 328350"
    );
    let out = submit(
        &cluster.address(),
        Some(&cluster.token),
        &file,
        &["--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"total": [328350]}));
}

/// Each bad graph, the exit code and a piece of the message that names what was wrong.
#[tokio::test(flavor = "multi_thread")]
async fn bad_graph_files_are_rejected_with_a_clear_message() {
    let cluster = Cluster::start(1, &[], &[]);
    cluster.client(1).await;
    let cases = [
        (
            r#"{"tasks": [{"key": "a", "kind": "noop", "deps": ["b"]}, {"key": "b", "kind": "noop", "deps": ["a"]}]}"#,
            2,
            "cycle: a -> b -> a",
        ),
        (
            r#"{"tasks": [{"key": "a", "kind": "noop", "deps": ["ghost"]}]}"#,
            2,
            r#"task "a" depends on "ghost""#,
        ),
        (
            r#"{"tasks": [{"key": "a", "kind": "noop"}, {"key": "a", "kind": "noop"}]}"#,
            2,
            r#"key "a" appears more than once"#,
        ),
        (
            r#"{"tasks": [{"key": "a", "kind": "teleport"}]}"#,
            2,
            r#"unknown kind "teleport""#,
        ),
        (
            r#"{"tasks": [{"key": "a", "kind": "noop"}], "outputs": ["zz"]}"#,
            2,
            r#"output "zz""#,
        ),
        (
            r#"{"tasks": [{"key": "a", "kind": "sleep", "args": {"ms": "x"}}]}"#,
            2,
            r#"task "a": invalid arguments for kind "sleep""#,
        ),
        (r#"{"tasks": [{"key": "a", "kin": "noop"}]}"#, 2, "tasks[0]"),
        (
            r#"{"tasks": [{"key": "a", "kind": "noop"}"#,
            2,
            "malformed graph JSON",
        ),
        (r#"{"tasks": []}"#, 2, "no tasks"),
        (
            r#"{"tasks": [{"key": "a", "kind": "fail", "args": {"message": "disk on fire"}}]}"#,
            1,
            r#"task "a" failed on worker "w0": disk on fire"#,
        ),
    ];
    for (i, (graph, code, msg)) in cases.iter().enumerate() {
        let file = cluster.dir.path().join(format!("bad{i}.json"));
        std::fs::write(&file, graph).unwrap();
        let out = submit(&cluster.address(), Some(&cluster.token), &file, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "case {i}: {stderr}");
        assert!(
            stderr.contains(msg),
            "case {i}: expected {msg:?} in {stderr:?}"
        );
    }
    let missing = submit(
        &cluster.address(),
        Some(&cluster.token),
        &cluster.dir.path().join("nope.json"),
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
    let unreachable = submit(
        "127.0.0.1:1",
        None,
        &cluster.dir.path().join("bad0.json"),
        &[],
    );
    assert_eq!(
        unreachable.status.code(),
        Some(2),
        "graph errors come before connecting"
    );
}

/// The scheduler checks graphs itself: clients other than the CLI get the same errors.
#[tokio::test(flavor = "multi_thread")]
async fn scheduler_rejects_bad_graphs_before_running_anything() {
    let cluster = Cluster::start(1, &[], &[]);
    let client = cluster.client(1).await;
    let bad = [
        (vec![TaskSpec::new("a", "noop").deps(["a"])], "cycle"),
        (
            vec![TaskSpec::new("a", "noop").deps(["b"])],
            "not in the graph",
        ),
        (vec![TaskSpec::new("a", "nope")], "unknown kind"),
        (
            vec![TaskSpec::new("a", "noop"), TaskSpec::new("a", "noop")],
            "more than once",
        ),
        (vec![TaskSpec::new("", "noop")], "empty key"),
        (
            vec![TaskSpec::new("a", "range").payload("{not json")],
            "invalid arguments",
        ),
        (vec![TaskSpec::new("a", "sum")], "at least one input"),
    ];
    for (tasks, msg) in bad {
        match client
            .compute(
                Graph {
                    tasks,
                    ..Graph::default()
                },
                |_| {},
            )
            .await
        {
            Err(Error::Rejected(m)) => assert!(m.contains(msg), "{m:?} lacks {msg:?}"),
            other => panic!(
                "expected a rejection naming {msg:?}, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    let info = client.info().await.unwrap();
    assert!(
        info.tasks.iter().all(|s| s.count == 0),
        "nothing was scheduled: {:?}",
        info.tasks
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_protobuf_is_an_error_and_the_scheduler_keeps_serving() {
    let cluster = Cluster::start(1, &[], &[]);
    let client = cluster.client(1).await;
    let channel = daskrs_proto::net::connect(&cluster.address(), Some(&cluster.token), None)
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/daskrs.v1.Scheduler/Gather");
    let garbage = vec![0xffu8, 0xff, 0xff, 0x0f, 0x12, 0x99];
    let err = grpc
        .unary(tonic::Request::new(garbage), path, RawCodec)
        .await
        .expect_err("garbage must not decode");
    assert_ne!(err.code(), tonic::Code::Ok);
    assert!(err.message().to_lowercase().contains("decode"), "{err:?}");
    check_slow_sum(&client, 4, 10, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_and_failures_reach_the_client_with_key_and_worker() {
    let cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let mut tasks = vec![range("x", 0, 4)];
    tasks.push(
        TaskSpec::new("boom", "fail")
            .payload(r#"{"message": "bad row 17"}"#)
            .deps(["x"])
            .retries(2),
    );
    tasks.push(TaskSpec::new("after", "sum").deps(["boom"]));
    tasks.push(TaskSpec::new("other", "sum").deps(["x"]));
    let err = client
        .compute(
            Graph {
                tasks,
                ..Graph::default()
            },
            |_| {},
        )
        .await
        .unwrap_err();
    let Error::Failed(failure) = err else {
        panic!("expected a failure, got {err}")
    };
    let TaskFailure {
        key,
        worker,
        error,
        exception,
        lost_outputs,
    } = *failure;
    assert_eq!(key, "boom");
    assert!(worker == "w0" || worker == "w1", "{worker}");
    assert_eq!(error, "bad row 17");
    assert!(
        exception.is_empty(),
        "a built-in kind's error raises nothing"
    );
    assert_eq!(lost_outputs, vec!["after"]);
    // One task erred for good, after its retries.
    let (_, metrics) = cluster.http_get("/metrics");
    assert!(
        metrics.contains("daskrs_scheduler_tasks_erred_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_graph() {
    let cluster = Cluster::start(1, &[], &[]);
    let client = cluster.client(1).await;
    let (tasks, root, _) = slow_sum(50, 10, 200);
    let runner = client.clone();
    let run = tokio::spawn(async move { runner.compute(rooted(tasks, root), |_| {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let graph_id = {
        let mut id = 0;
        for candidate in 1..5 {
            if client.cancel(candidate).await.unwrap() {
                id = candidate;
                break;
            }
        }
        id
    };
    assert!(graph_id > 0, "no graph to cancel");
    let err = run.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = client.info().await.unwrap();
    assert_eq!(info.graphs, 0);
    assert!(info.tasks.iter().all(|s| s.count == 0), "{:?}", info.tasks);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_endpoints_serve_health_metrics_and_the_worker_api() {
    let cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let (tasks, root, _) = slow_sum(8, 1000, 0);
    client.compute(rooted(tasks, root), |_| {}).await.unwrap();
    assert_eq!(cluster.http_get("/health"), (200, "ok\n".into()));
    let (code, metrics) = cluster.http_get("/metrics");
    assert_eq!(code, 200);
    for needle in [
        "daskrs_scheduler_tasks{state=\"memory\"}",
        "daskrs_scheduler_workers{status=\"running\"} 2",
        "daskrs_scheduler_bytes_held",
        "daskrs_scheduler_transfer_bytes_total",
        "daskrs_scheduler_task_duration_seconds_bucket",
        "daskrs_scheduler_tasks_finished_total 31",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let (code, body) = cluster.http_get("/api/v1/workers");
    assert_eq!(code, 200);
    let workers: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(workers.len(), 2);
    let names: Vec<&str> = workers
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"w0") && names.contains(&"w1"), "{names:?}");
    let (code, body) = cluster.http_get("/api/v1/adaptive");
    assert_eq!(code, 200);
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        a["desired_workers"], 0,
        "idle cluster wants no workers: {a}"
    );
    assert_eq!(a["current_workers"], 2);
    let (code, body) = cluster.http("POST", "/api/v1/retire", r#"{"workerz": []}"#);
    assert_eq!(code, 400);
    assert!(body.contains("workerz"), "{body}");
    let (code, body) = cluster.http("POST", "/api/v1/retire", r#"{"workers": ["nobody"]}"#);
    assert_eq!(code, 404);
    assert!(body.contains("nobody"), "{body}");
}

/// Sends bytes as they are, to feed the server malformed protobuf.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_serves_health_readiness_and_metrics() {
    let mut cluster = Cluster::start(1, &[], &[]);
    let port = cluster.worker_http_port(0);
    let client = cluster.client(1).await;
    check_slow_sum(&client, 4, 10, 0).await;
    assert_eq!(
        harness::http_as(port, "GET", "/health", "", None),
        (200, "ok\n".into())
    );
    assert_eq!(harness::http_as(port, "GET", "/ready", "", None).0, 200);
    let (code, metrics) = harness::http_as(port, "GET", "/metrics", "", Some(&cluster.token));
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"daskrs_worker_tasks_executed_total{worker="w0"} 15"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("daskrs_worker_task_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"daskrs_worker_connected{worker="w0"} 1"#),
        "{metrics}"
    );
    // Without its scheduler it is alive but not ready.
    cluster.scheduler.take().unwrap().signal("KILL");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while harness::http_as(port, "GET", "/ready", "", None).0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "worker still claims to be ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(harness::http_as(port, "GET", "/health", "", None).0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_cluster_serves_clients_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("local.ports");
    let mut local = harness::Proc {
        child: std::process::Command::new(harness::BIN)
            .args(["local", "--workers", "2", "--port", "0", "--http-port", "0"])
            .arg("--port-file")
            .arg(&port_file)
            .env("DASKRS_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    let port = harness::read_ports(&port_file, &mut local)["grpc"];
    let address = format!("127.0.0.1:{port}");
    let client = daskrs_client::Client::connect(&address, None)
        .await
        .unwrap();
    client
        .wait_for_workers(2, Duration::from_secs(20))
        .await
        .unwrap();
    let file = dir.path().join("g.json");
    std::fs::write(&file, r#"{"tasks": [{"key": "n", "kind": "range", "args": {"start": 1, "stop": 11}}, {"key": "s", "kind": "sum", "deps": ["n"]}]}"#).unwrap();
    let out = submit(&address, None, &file, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s = 55");
    let info = std::process::Command::new(harness::BIN)
        .args(["info", "--scheduler", &address])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success());
    assert!(
        text.contains("local-0") && text.contains("local-1"),
        "{text}"
    );
    drop(client);
    local.signal("TERM");
    let status = local
        .wait_exit(Duration::from_secs(20))
        .expect("local cluster stops on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_stops_on_sigterm_with_workers_attached() {
    let mut cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let (tasks, root, _) = slow_sum(4, 10, 0);
    let finished = client.run(rooted(tasks, root), |_| {}).await.unwrap();
    let mut scheduler = cluster.scheduler.take().unwrap();
    scheduler.signal("TERM");
    let status = scheduler
        .wait_exit(Duration::from_secs(20))
        .expect("scheduler stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    drop(finished);
    // Its workers keep running, waiting for a scheduler to come back.
    for w in &mut cluster.workers {
        assert!(
            w.wait_exit(Duration::from_millis(300)).is_none(),
            "a worker exited with the scheduler"
        );
    }
}

/// A session whose owner does not ask for events for a while (a notebook
/// busy submitting) keeps its stream: the events wait on the client, not in
/// the connection, where HTTP/2 would close it over thousands of small
/// unread frames.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_read_late_loses_no_events() {
    let cluster = Cluster::start(1, &[], &[]);
    let client = cluster.client(1).await;
    let session = client.session("late reader").await.unwrap();
    // A chain: each link finishes after the one before, so each is its
    // own small Done event.
    let n = 2000;
    let mut tasks = vec![
        range("c0", 0, 1),
        TaskSpec::new("one", "literal").payload(r#"{"values": [1]}"#),
    ];
    for i in 1..n {
        tasks.push(
            TaskSpec::new(format!("c{i}"), "add").deps([format!("c{}", i - 1), "one".into()]),
        );
    }
    let outputs: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    session
        .submit(Graph {
            tasks,
            outputs: outputs.clone(),
            name: "chain".into(),
        })
        .unwrap();
    harness::kube::wait_for(
        "the whole chain in memory",
        Duration::from_secs(120),
        &|| String::new(),
        || async {
            let info = client.info().await.ok()?;
            let count = |state: &str| {
                info.tasks
                    .iter()
                    .filter(|c| c.state == state)
                    .map(|c| c.count)
                    .sum::<u64>()
            };
            let busy = count("waiting") + count("queued") + count("processing");
            (busy == 0 && count("memory") >= n as u64).then_some(())
        },
    )
    .await;
    let mut done = std::collections::HashSet::new();
    while done.len() < n {
        let events = tokio::time::timeout(Duration::from_secs(30), session.events())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} Done events, then none", done.len()));
        for ev in events.unwrap() {
            match ev {
                daskrs_client::session::Event::Done(outs) => {
                    done.extend(outs.into_iter().map(|o| o.key));
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
    assert_eq!(done, outputs.into_iter().collect());
    let last = session.gather(&format!("c{}", n - 1)).await.unwrap();
    assert_eq!(ints(&last), vec![(n - 1) as i64]);
}
