//! The worker-facing service: one long-lived stream per worker.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use daskrs_proto::scheduler_message::Msg as Down;
use daskrs_proto::worker_control_server::WorkerControl;
use daskrs_proto::worker_message::Msg as Up;
use daskrs_proto::{SchedulerBatch, WorkerBatch};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::Core;
use crate::state::{Registration, WorkerId};

pub struct WorkerService {
    pub core: Arc<Core>,
}

/// The most messages sent to a worker in one batch.
const MAX_BATCH: usize = 4096;

type BatchStream = Pin<Box<dyn Stream<Item = Result<SchedulerBatch, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerControl for WorkerService {
    type AttachStream = BatchStream;

    async fn attach(
        &self,
        req: Request<Streaming<WorkerBatch>>,
    ) -> Result<Response<BatchStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the register message"))?;
        let reg = match first.messages.into_iter().next().and_then(|m| m.msg) {
            Some(Up::Register(r)) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a worker stream must be `register`",
                ));
            }
        };
        if reg.address.is_empty() {
            return Err(Status::invalid_argument("register.address is empty"));
        }
        if reg.nthreads == 0 {
            return Err(Status::invalid_argument(
                "register.nthreads must be at least 1",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel::<Down>();
        let heartbeat_ms = self.core.heartbeat_interval.as_millis() as u64;
        let id = self.core.with(|i| {
            let id = i.state.add_worker(
                Registration {
                    name: reg.name,
                    address: reg.address,
                    nthreads: reg.nthreads,
                    memory_limit: reg.memory_limit,
                    kinds: reg.kinds,
                },
                Instant::now(),
            );
            let _ = tx.send(Down::Welcome(daskrs_proto::Welcome {
                worker_id: id,
                heartbeat_interval_ms: heartbeat_ms,
            }));
            i.workers.insert(id, tx);
            id
        });
        let core = self.core.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(batch)) => core.with(|i| apply(&core, i, id, batch)),
                    Ok(None) => break "connection closed".to_string(),
                    Err(s) => break format!("connection lost: {}", s.message()),
                }
            };
            core.with(|i| {
                i.state.remove_worker(id, &reason);
                i.workers.remove(&id);
            });
        });
        Ok(Response::new(Box::pin(batches(rx))))
    }
}

/// Sends what is queued for a worker as one batch whenever it has something.
fn batches(
    rx: mpsc::UnboundedReceiver<Down>,
) -> impl Stream<Item = Result<SchedulerBatch, Status>> {
    futures::stream::unfold(rx, |mut rx| async move {
        let first = rx.recv().await?;
        let mut msgs = vec![first];
        while msgs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        Some((Ok(daskrs_proto::scheduler_batch(msgs)), rx))
    })
}

fn apply(core: &Core, i: &mut super::Inner, worker: WorkerId, batch: WorkerBatch) {
    let state = &mut i.state;
    state.seen(worker, Instant::now());
    for m in batch.messages.into_iter().filter_map(|m| m.msg) {
        match m {
            Up::Register(_) => {
                tracing::warn!(worker, "ignoring a second register message");
            }
            Up::Finished(f) => {
                core.metrics.task_duration.observe(f.duration);
                state.task_finished(
                    worker,
                    f.task_id,
                    f.nbytes,
                    f.format,
                    f.duration,
                    f.transfer_bytes,
                );
            }
            Up::Erred(e) => state.task_erred(worker, e.task_id, e.error, e.missing_inputs),
            Up::Heartbeat(h) => state.heartbeat(
                worker,
                h.memory_bytes,
                h.spilled_bytes,
                h.paused,
                h.executed,
            ),
            Up::StealResponse(s) => state.steal_response(worker, s.task_id, s.stolen),
            Up::ReplicaAdded(r) => state.replica_added(worker, r.task_id, r.nbytes),
            Up::ReplicaFailed(r) => state.replica_failed(worker, r.task_id, &r.error),
            Up::RetireMe(r) => {
                tracing::info!(worker, reason = %r.reason, "worker asks to retire");
                state.retire(&[worker]);
            }
        }
    }
}
