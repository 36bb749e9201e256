//! A worker that is writing a large result to disk still talks to its
//! scheduler: heartbeats keep coming while the spill is held open.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daskrs_proto::scheduler_message::Msg as Down;
use daskrs_proto::worker_control_server::{WorkerControl, WorkerControlServer};
use daskrs_proto::worker_message::Msg as Up;
use daskrs_proto::{SchedulerBatch, WorkerBatch};
use daskrs_worker::kinds::Registry;
use daskrs_worker::store::{FileWriter, SpillWriter};
use daskrs_worker::{WorkerConfig, run_with};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// Holds every spill until the test lets it go.
struct Gate {
    entered: mpsc::UnboundedSender<()>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl SpillWriter for Gate {
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let _ = self.entered.send(());
        let _ = self.go.lock().unwrap().recv();
        FileWriter.write(path, bytes)
    }
}

/// Plays the scheduler: welcomes the worker, hands it one task, and passes
/// on everything the worker sends.
struct StandIn {
    compute: daskrs_proto::ComputeTask,
    up: mpsc::UnboundedSender<Up>,
}

type Batches = Pin<Box<dyn Stream<Item = Result<SchedulerBatch, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerControl for StandIn {
    type AttachStream = Batches;

    async fn attach(
        &self,
        req: Request<Streaming<WorkerBatch>>,
    ) -> Result<Response<Batches>, Status> {
        let mut inbound = req.into_inner();
        let up = self.up.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                for m in batch.messages.into_iter().filter_map(|m| m.msg) {
                    let _ = up.send(m);
                }
            }
        });
        let first = daskrs_proto::scheduler_batch(vec![
            Down::Welcome(daskrs_proto::Welcome {
                worker_id: 1,
                heartbeat_interval_ms: 50,
            }),
            Down::Compute(self.compute.clone()),
        ]);
        let stream = futures::stream::iter([Ok(first)]).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn next_up(rx: &mut mpsc::UnboundedReceiver<Up>) -> Up {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the worker went silent")
        .expect("the worker's stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_keeps_heartbeating_while_it_spills() {
    let (up_tx, mut up) = mpsc::unbounded_channel();
    let compute = daskrs_proto::ComputeTask {
        task_id: 7,
        key: "big".into(),
        kind: "blob".into(),
        payload: br#"{"bytes": 4000000}"#.to_vec().into(),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        daskrs_proto::net::server()
            .add_service(WorkerControlServer::new(StandIn { compute, up: up_tx }))
            .serve_with_incoming(daskrs_proto::net::incoming(listener, None)),
    );

    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(Gate {
        entered: entered_tx,
        go: Mutex::new(go_rx),
    });
    let dir = tempfile::tempdir().unwrap();
    let config = WorkerConfig {
        scheduler,
        name: "spiller".into(),
        nthreads: 1,
        // The 4 MB result is over the spill target at once.
        memory_limit: 1 << 20,
        local_dir: dir.path().to_path_buf(),
        listen: ([127, 0, 0, 1], 0).into(),
        http_listen: None,
        contact_address: None,
        shutdown_timeout: Duration::from_secs(1),
        pause_on_process_memory: false,
        port_file: None,
        token: None,
        tls: None,
        open_metrics: false,
    };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(run_with(config, Registry::builtin(), gate, shutdown));

    tokio::time::timeout(Duration::from_secs(30), entered.recv())
        .await
        .expect("the result was never spilled")
        .unwrap();
    // The spill is held; the session still reports. Only heartbeats that
    // count the result in memory while nothing is on disk yet were sent
    // during the spill (those from before the task ran hold nothing).
    let mut beats = 0;
    while beats < 3 {
        match next_up(&mut up).await {
            Up::Heartbeat(h) if (h.memory_bytes, h.spilled_bytes) == (4_000_000, 0) => beats += 1,
            Up::Finished(f) => panic!("finished before its result was stored: {f:?}"),
            _ => {}
        }
    }
    go.send(()).unwrap();
    let finished = loop {
        if let Up::Finished(f) = next_up(&mut up).await {
            break f;
        }
    };
    assert_eq!((finished.task_id, finished.nbytes), (7, 4_000_000));
    // Stamped for the task stream: its thread and end, and no fetch.
    assert_eq!(finished.thread, 0);
    assert!(finished.stop > 0.0, "{finished:?}");
    assert_eq!((finished.fetch_start, finished.fetch_stop), (0.0, 0.0));
    loop {
        if let Up::Heartbeat(h) = next_up(&mut up).await
            && h.spilled_bytes == 4_000_000
        {
            assert_eq!((h.memory_bytes, h.managed_bytes), (0, 0));
            assert_eq!(h.pause_bytes, (0.8 * f64::from(1 << 20)) as u64);
            // The spill, once, on the worker's clock: it began before the
            // task's report went out, as the store wrote it then.
            let [spill] = h.spills.as_slice() else {
                panic!("one spill mark: {:?}", h.spills);
            };
            assert_eq!(spill.bytes, 4_000_000);
            assert!(spill.start <= spill.stop, "{spill:?}");
            assert!(
                spill.start >= finished.stop,
                "{spill:?} after {}",
                finished.stop
            );
            break;
        }
    }
}
