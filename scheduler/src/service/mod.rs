//! The scheduler's network edge: decodes requests, calls the state machine
//! under one lock, and sends what it left in its outbox.

pub mod client;
#[cfg(test)]
mod fuzz;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use daskrs_proto::scheduler_message::Msg as Down;
use daskrs_proto::{RunEvent, run_event};
use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use crate::metrics::Metrics;
use crate::state::{GraphEvent, GraphId, State, ToWorker, WorkerId};

pub type EventSender = UnboundedSender<Result<RunEvent, Status>>;

pub struct Inner {
    pub state: State,
    pub workers: HashMap<WorkerId, UnboundedSender<Down>>,
    pub clients: HashMap<GraphId, EventSender>,
}

/// Everything the services share.
pub struct Core {
    inner: Mutex<Inner>,
    pub metrics: Metrics,
    pub heartbeat_interval: Duration,
    /// Channels to workers' peer data services, for gathering results.
    pub channels: daskrs_proto::net::Channels,
}

impl Core {
    /// Calls to workers go through `channels`.
    pub fn new(
        state: State,
        heartbeat_interval: Duration,
        channels: daskrs_proto::net::Channels,
    ) -> Arc<Core> {
        Arc::new(Core {
            inner: Mutex::new(Inner {
                state,
                workers: HashMap::new(),
                clients: HashMap::new(),
            }),
            metrics: Metrics::new(),
            heartbeat_interval,
            channels,
        })
    }

    /// Runs `f` on the state, then sends what it produced.
    pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.lock();
        let r = f(&mut g);
        flush(&mut g);
        r
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state machine does not panic on input; if it ever did, keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock: heartbeat checks, retirements, progress.
    pub async fn tick_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.with(|i| i.state.tick(Instant::now()));
        }
    }
}

/// Sends the outbox: worker messages grouped per worker, client events.
fn flush(inner: &mut Inner) {
    let out = inner.state.take_outbox();
    let mut frees: HashMap<WorkerId, Vec<u64>> = HashMap::new();
    for (w, msg) in out.to_workers {
        let down = match msg {
            ToWorker::Free(id) => {
                frees.entry(w).or_default().push(id);
                continue;
            }
            ToWorker::Compute(c) => Down::Compute(c.into()),
            ToWorker::Steal(id) => Down::Steal(daskrs_proto::StealRequest { task_id: id }),
            ToWorker::FetchReplica { task, addresses } => {
                Down::FetchReplica(daskrs_proto::FetchReplica {
                    task_id: task,
                    addresses,
                })
            }
            ToWorker::Close { reason } => Down::Close(daskrs_proto::CloseWorker { reason }),
        };
        if let Some(tx) = inner.workers.get(&w) {
            let _ = tx.send(down);
        }
    }
    for (w, ids) in frees {
        if let Some(tx) = inner.workers.get(&w) {
            let _ = tx.send(Down::Free(daskrs_proto::FreeResults { task_ids: ids }));
        }
    }
    for w in out.closed_workers {
        // Dropping the sender ends the worker's stream after what is queued.
        inner.workers.remove(&w);
    }
    // A session's keys that finished together go out as one event.
    let mut done: Option<(GraphId, Vec<daskrs_proto::OutputInfo>)> = None;
    for (g, ev) in out.to_clients {
        if let GraphEvent::Done(o) = &ev
            && done.as_ref().is_none_or(|(dg, _)| *dg == g)
        {
            done.get_or_insert_with(|| (g, Vec::new()))
                .1
                .push(output_info(o));
            continue;
        }
        send_done(inner, done.take());
        if let GraphEvent::Done(o) = ev {
            done = Some((g, vec![output_info(&o)]));
            continue;
        }
        let Some(tx) = inner.clients.get(&g) else {
            continue;
        };
        let _ = tx.send(Ok(to_run_event(g, ev)));
    }
    send_done(inner, done);
}

fn send_done(inner: &Inner, done: Option<(GraphId, Vec<daskrs_proto::OutputInfo>)>) {
    if let Some((g, outputs)) = done
        && let Some(tx) = inner.clients.get(&g)
    {
        let _ = tx.send(Ok(RunEvent {
            event: Some(run_event::Event::Done(daskrs_proto::KeysDone { outputs })),
        }));
    }
}

fn output_info(o: &crate::state::OutputInfo) -> daskrs_proto::OutputInfo {
    daskrs_proto::OutputInfo {
        key: o.key.clone(),
        nbytes: o.nbytes,
        format: daskrs_proto::convert::format_number(o.format),
    }
}

fn to_run_event(graph_id: GraphId, ev: GraphEvent) -> RunEvent {
    let event = match ev {
        GraphEvent::Progress {
            total,
            done,
            processing,
            erred,
        } => run_event::Event::Progress(daskrs_proto::GraphProgress {
            total,
            done,
            processing,
            erred,
        }),
        GraphEvent::Finished { outputs, prefixes } => {
            run_event::Event::Finished(daskrs_proto::GraphFinished {
                graph_id,
                outputs: outputs.iter().map(output_info).collect(),
                prefixes: prefixes
                    .into_iter()
                    .map(|(prefix, t)| daskrs_proto::PrefixTotals {
                        prefix,
                        tasks: t.tasks,
                        seconds: t.seconds,
                        waited: t.waited,
                        nbytes: t.nbytes,
                        transfer_bytes: t.transfer_bytes,
                    })
                    .collect(),
            })
        }
        GraphEvent::Done(o) => run_event::Event::Done(daskrs_proto::KeysDone {
            outputs: vec![output_info(&o)],
        }),
        GraphEvent::Erred { key, failure } => run_event::Event::Erred(daskrs_proto::KeyErred {
            key,
            failed_key: failure.key,
            worker: failure.worker,
            error: failure.error,
            exception: failure.exception.into(),
        }),
        GraphEvent::Failed {
            key,
            worker,
            error,
            exception,
            lost_outputs,
        } => run_event::Event::Failed(daskrs_proto::GraphFailed {
            graph_id,
            key,
            worker,
            error,
            lost_outputs,
            exception: exception.into(),
        }),
    };
    RunEvent { event: Some(event) }
}
