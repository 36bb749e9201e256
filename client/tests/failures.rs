//! Workers and schedulers that die, stall, retire or run out of memory, as
//! separate processes.

mod harness;

use std::time::{Duration, Instant};

use daskrs_client::Graph;
use daskrs_core::TaskSpec;
use harness::Cluster;
use harness::graphs::{int, ints, range, rooted, slow_sum};

#[tokio::test(flavor = "multi_thread")]
async fn worker_killed_mid_graph_still_completes() {
    let cluster = Cluster::start(3, &[], &[]);
    let client = cluster.client(3).await;
    let (tasks, root, want) = slow_sum(60, 1000, 50);
    let runner = client.clone();
    let run = tokio::spawn(async move { runner.compute(rooted(tasks, root), |_| {}).await });
    // Let every worker run and hold results, then kill one outright.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let held_before: u64 = client
        .info()
        .await
        .unwrap()
        .workers
        .iter()
        .map(|w| w.held_results)
        .sum();
    assert!(
        held_before > 0,
        "the kill should hit a worker holding results"
    );
    cluster.workers[1].signal("KILL");
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("graph finishes")
        .unwrap()
        .unwrap();
    assert_eq!(int(&out[0]), want);
    let (_, metrics) = cluster.http_get("/metrics");
    assert!(
        metrics.contains("daskrs_scheduler_workers_lost_total 1"),
        "{metrics}"
    );
    assert_eq!(client.info().await.unwrap().workers.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_that_stops_answering_is_removed_and_its_work_rescheduled() {
    let cluster = Cluster::start(2, &["--worker-ttl", "2", "--heartbeat", "0.2"], &[]);
    let client = cluster.client(2).await;
    let (tasks, root, want) = slow_sum(20, 100, 100);
    let runner = client.clone();
    let run = tokio::spawn(async move { runner.compute(rooted(tasks, root), |_| {}).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Frozen, not dead: the connection stays open, only heartbeats stop.
    cluster.workers[0].signal("STOP");
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("graph finishes")
        .unwrap()
        .unwrap();
    assert_eq!(int(&out[0]), want);
    let info = client.info().await.unwrap();
    assert_eq!(
        info.workers
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        vec!["w1"]
    );
    cluster.workers[0].signal("CONT");
    // Thawed, it finds its stream closed, starts clean and joins again.
    client
        .wait_for_workers(2, Duration::from_secs(20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_restarted_and_workers_rejoin() {
    let mut cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let (tasks, root, want) = slow_sum(8, 100, 0);
    let graph = rooted(tasks, root);
    assert_eq!(
        int(&client.compute(graph.clone(), |_| {}).await.unwrap()[0]),
        want
    );

    cluster.scheduler.take().unwrap().signal("KILL");
    let err = client.info().await;
    assert!(err.is_err(), "the old scheduler is gone");
    cluster.start_scheduler();
    let client = cluster.client(2).await;
    let info = client.info().await.unwrap();
    assert!(
        info.workers.iter().all(|w| w.held_results == 0),
        "workers start clean"
    );
    assert_eq!(int(&client.compute(graph, |_| {}).await.unwrap()[0]), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_smaller_than_the_data_completes_by_spilling() {
    // 40 results of 800 kB each (32 MB) on two workers limited to 4 MB each.
    // The processes themselves need more than 4 MB: pause on results alone.
    let cluster = Cluster::start(
        2,
        &[],
        &[
            "--memory-limit",
            "4MiB",
            "--pause-on-process-memory",
            "false",
        ],
    );
    let client = cluster.client(2).await;
    let size = 100_000i64;
    let mut tasks: Vec<TaskSpec> = (0..40)
        .map(|c| range(&format!("x{c}"), c * size, (c + 1) * size))
        .collect();
    tasks.push(TaskSpec::new("total", "sum").deps((0..40).map(|c| format!("x{c}"))));
    let mut outputs: Vec<String> = (0..40).map(|c| format!("x{c}")).collect();
    outputs.push("total".into());
    let finished = client
        .run(
            Graph {
                tasks,
                outputs,
                ..Graph::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    // Workers report memory in their heartbeats (every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = client.info().await.unwrap();
        if info.workers.iter().all(|w| w.spilled_bytes > 0) || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spilled: u64 = info.workers.iter().map(|w| w.spilled_bytes).sum();
    let in_memory: u64 = info.workers.iter().map(|w| w.memory_bytes).sum();
    assert!(spilled > 20_000_000, "spilled only {spilled} bytes");
    for w in &info.workers {
        assert!(
            w.memory_bytes <= 4 << 20,
            "{} holds {} bytes in memory",
            w.name,
            w.memory_bytes
        );
    }
    assert!(in_memory > 0);
    let n = 40 * size;
    let total = client.gather(&finished, "total").await.unwrap();
    assert_eq!(int(&total), n * (n - 1) / 2);
    let x7 = client.gather(&finished, "x7").await.unwrap();
    assert_eq!(ints(&x7), (7 * size..8 * size).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn retired_worker_hands_off_its_results_then_exits() {
    let mut cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let tasks: Vec<TaskSpec> = (0..20).map(|i| range(&format!("r{i}"), i, i + 3)).collect();
    let finished = client
        .run(
            Graph {
                tasks,
                ..Graph::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    let info = client.info().await.unwrap();
    let w0 = info.workers.iter().find(|w| w.name == "w0").unwrap();
    assert!(w0.held_results > 0, "w0 should hold some outputs");
    let retired = client.retire(vec!["w0".into()], 0, 30).await.unwrap();
    assert_eq!(retired, vec!["w0"]);
    let status = cluster.workers[0]
        .wait_exit(Duration::from_secs(10))
        .expect("retired worker exits");
    assert!(status.success(), "{status:?}");
    for i in 0..20i64 {
        let o = client.gather(&finished, &format!("r{i}")).await.unwrap();
        assert_eq!(ints(&o), vec![i, i + 1, i + 2]);
    }
    let (_, metrics) = cluster.http_get("/metrics");
    assert!(
        metrics.contains("daskrs_scheduler_tasks_recomputed_total 0"),
        "hand-off, not recomputation:\n{metrics}"
    );
    assert!(
        metrics.contains("daskrs_scheduler_workers_lost_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_worker_without_losing_results() {
    let mut cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let tasks: Vec<TaskSpec> = (0..20).map(|i| range(&format!("r{i}"), i, i + 1)).collect();
    let finished = client
        .run(
            Graph {
                tasks,
                ..Graph::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    cluster.workers[1].signal("TERM");
    let status = cluster.workers[1]
        .wait_exit(Duration::from_secs(20))
        .expect("worker exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    for i in 0..20i64 {
        assert_eq!(
            ints(&client.gather(&finished, &format!("r{i}")).await.unwrap()),
            vec![i]
        );
    }
    let (_, metrics) = cluster.http_get("/metrics");
    assert!(
        metrics.contains("daskrs_scheduler_tasks_recomputed_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_over_its_memory_limit_pauses_and_takes_no_tasks() {
    let mut cluster = Cluster::start(1, &["--heartbeat", "0.1"], &[]);
    // A limit far below what the process itself needs: paused from its first heartbeat.
    cluster.add_worker(&["--memory-limit", "1MiB"]);
    let client = cluster.client(2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = client.info().await.unwrap();
        let w1 = info.workers.iter().find(|w| w.name == "w1").unwrap();
        if w1.status == "paused" {
            break;
        }
        assert!(Instant::now() < deadline, "w1 never paused: {}", w1.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tasks, root, want) = slow_sum(40, 100, 0);
    let out = client.compute(rooted(tasks, root), |_| {}).await.unwrap();
    assert_eq!(int(&out[0]), want);
    // Let a last heartbeat carry w1's count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = client.info().await.unwrap();
    let w0 = info.workers.iter().find(|w| w.name == "w0").unwrap();
    let w1 = info.workers.iter().find(|w| w.name == "w1").unwrap();
    assert_eq!(w1.executed, 0, "a paused worker ran tasks");
    assert!(w0.executed >= 159, "w0 ran {}", w0.executed);
}

/// Something at the scheduler's address that takes the worker's stream
/// and never welcomes it, while answering HTTP/2 pings (an old scheduler
/// still shutting down behind a Service): the worker gives that attempt up
/// and registers again, rather than waiting forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_registration_is_never_answered_registers_again() {
    use daskrs_proto::worker_control_server::{WorkerControl, WorkerControlServer};
    use daskrs_proto::{SchedulerBatch, WorkerBatch};

    type Batches = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<SchedulerBatch, tonic::Status>> + Send>,
    >;
    struct Silent(tokio::sync::mpsc::UnboundedSender<()>);
    #[tonic::async_trait]
    impl WorkerControl for Silent {
        type AttachStream = Batches;
        async fn attach(
            &self,
            _req: tonic::Request<tonic::Streaming<WorkerBatch>>,
        ) -> Result<tonic::Response<Batches>, tonic::Status> {
            let _ = self.0.send(());
            Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (tx, mut attached) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        daskrs_proto::net::server()
            .add_service(WorkerControlServer::new(Silent(tx)))
            .serve_with_incoming(daskrs_proto::net::incoming(listener, None)),
    );
    let dir = tempfile::tempdir().unwrap();
    let child = harness::quiet(std::process::Command::new(harness::BIN).arg("worker"))
        .args([
            "--scheduler",
            &address,
            "--name",
            "w",
            "--host",
            "127.0.0.1",
        ])
        .args(["--port", "0", "--nthreads", "1", "--local-dir"])
        .arg(dir.path())
        .spawn()
        .unwrap();
    let _worker = harness::Proc { child };
    tokio::time::timeout(Duration::from_secs(30), attached.recv())
        .await
        .expect("the worker never attached")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), attached.recv())
        .await
        .expect("the worker waited on a registration nobody answers")
        .unwrap();
}
