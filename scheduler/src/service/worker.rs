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
use crate::state::{
    Finished, Registration, RemoveReason, State, TaskFailure, WorkerId, WorkerReport,
};

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
        // Register opens the first batch; anything after it in that batch is
        // handled once the worker is known.
        let clock = first.clock;
        let mut first = first.messages.into_iter();
        let reg = match first.next().and_then(|m| m.msg) {
            Some(Up::Register(r)) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a worker stream must be `register`",
                ));
            }
        };
        let reg = registration(reg)?;
        let (tx, rx) = mpsc::unbounded_channel::<Down>();
        let heartbeat_ms = self.core.heartbeat_interval.as_millis() as u64;
        let id = self.core.with(|i| {
            let id = i.state.add_worker(reg, Instant::now());
            let _ = tx.send(Down::Welcome(daskrs_proto::Welcome {
                worker_id: id,
                heartbeat_interval_ms: heartbeat_ms,
            }));
            i.workers.insert(id, tx);
            let rest: Vec<_> = first.collect();
            if !rest.is_empty() {
                let rest = WorkerBatch {
                    messages: rest,
                    clock,
                };
                apply(&self.core, i, id, rest);
            }
            id
        });
        let core = self.core.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(batch)) => core.with(|i| apply(&core, i, id, batch)),
                    Ok(None) => break RemoveReason::Disconnected("connection closed".into()),
                    Err(s) => break RemoveReason::Disconnected(s.message().to_string()),
                }
            };
            core.with(|i| {
                i.state.remove_worker(id, reason);
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

/// A worker's register message, checked.
pub(crate) fn registration(reg: daskrs_proto::Register) -> Result<Registration, Status> {
    if reg.address.is_empty() {
        return Err(Status::invalid_argument("register.address is empty"));
    }
    if reg.nthreads == 0 {
        return Err(Status::invalid_argument(
            "register.nthreads must be at least 1",
        ));
    }
    Ok(Registration {
        name: reg.name,
        address: reg.address,
        nthreads: reg.nthreads,
        memory_limit: reg.memory_limit,
        kinds: reg.kinds,
        python: reg.python,
    })
}

fn apply(core: &Core, i: &mut super::Inner, worker: WorkerId, batch: WorkerBatch) {
    apply_to(&mut i.state, worker, batch, |seconds| {
        core.metrics.task_duration.observe(seconds)
    });
}

/// Applies what a worker reports to the state; `ran` hears each finished
/// task's duration.
pub(crate) fn apply_to(
    state: &mut State,
    worker: WorkerId,
    batch: WorkerBatch,
    mut ran: impl FnMut(f64),
) {
    state.seen(worker, Instant::now());
    // The worker's clock to the scheduler's (see `State::clock_offset`).
    // Times it cannot place (no clock, or values that are not times) are
    // taken as now; none is placed after now.
    let now = daskrs_core::clock::now();
    let offset = (batch.clock.is_finite() && batch.clock > 0.0)
        .then(|| state.clock_offset(worker, now - batch.clock));
    let on_ours = |t: f64| match offset {
        Some(offset) if t.is_finite() && t > 0.0 => (t + offset).clamp(0.0, now),
        _ => now,
    };
    for m in batch.messages.into_iter().filter_map(|m| m.msg) {
        match m {
            Up::Register(_) => {
                tracing::warn!(worker, "ignoring a second register message");
            }
            Up::Finished(f) => {
                ran(f.duration);
                let format = match daskrs_proto::convert::data_format(f.format) {
                    Ok(format) => format,
                    Err(e) => {
                        // The task ran but its result cannot be read: as good as failed.
                        state.task_erred(worker, f.task_id, e.to_string().into(), vec![]);
                        continue;
                    }
                };
                state.task_finished(
                    worker,
                    Finished {
                        task: f.task_id,
                        nbytes: f.nbytes,
                        format,
                        duration: f.duration,
                        transfer_bytes: f.transfer_bytes,
                        waited: f.waited,
                        stop: on_ours(f.stop),
                        thread: f.thread,
                        fetch: (f.fetch_stop > 0.0)
                            .then(|| (on_ours(f.fetch_start), on_ours(f.fetch_stop))),
                    },
                );
            }
            Up::Erred(e) => state.task_erred(
                worker,
                e.task_id,
                TaskFailure {
                    error: e.error,
                    exception: e.exception.into(),
                },
                e.missing_inputs,
            ),
            Up::Heartbeat(h) => {
                for s in &h.spills {
                    state.spilled(worker, on_ours(s.start), on_ours(s.stop), s.bytes);
                }
                state.heartbeat(
                    worker,
                    WorkerReport {
                        memory_bytes: h.memory_bytes,
                        managed_bytes: h.managed_bytes,
                        process_bytes: h.process_bytes,
                        pause_bytes: h.pause_bytes,
                        at: now,
                        spilled_bytes: h.spilled_bytes,
                        paused: h.paused,
                        executed: h.executed,
                    },
                )
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use daskrs_proto::worker_control_client::WorkerControlClient;
    use futures::StreamExt;

    use super::*;
    use crate::state::WorkerStatus;
    use crate::{Scheduler, SchedulerConfig};

    /// Messages that share the register's batch are not dropped.
    #[tokio::test]
    async fn messages_after_register_in_the_first_batch_are_applied() {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let config = SchedulerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            http_listen: None,
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::start(config, shutdown).await.unwrap();
        let channel = daskrs_proto::net::connect(&scheduler.grpc_addr.to_string(), None, None)
            .await
            .unwrap();
        let first = daskrs_proto::worker_batch(vec![
            Up::Register(daskrs_proto::Register {
                name: "w".into(),
                address: "127.0.0.1:1".into(),
                nthreads: 1,
                memory_limit: 1 << 30,
                kinds: vec![],
                version: String::new(),
                python: String::new(),
            }),
            Up::Heartbeat(daskrs_proto::Heartbeat {
                memory_bytes: 7,
                spilled_bytes: 0,
                paused: true,
                executed: 3,
                ..Default::default()
            }),
        ]);
        // The stream stays open so the worker stays registered.
        let up = futures::stream::iter([first]).chain(futures::stream::pending());
        let mut down = WorkerControlClient::new(channel)
            .attach(up)
            .await
            .unwrap()
            .into_inner();
        let welcome = tokio::time::timeout(Duration::from_secs(10), down.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(Down::Welcome(w)) = welcome.messages[0].msg.clone() else {
            panic!("first message is not a welcome: {welcome:?}");
        };
        let inner = scheduler.core.lock();
        let worker = &inner.state.workers[&w.worker_id];
        assert_eq!(worker.status, WorkerStatus::Paused);
        assert_eq!((worker.memory_bytes, worker.executed), (7, 3));
    }
}
