//! The worker's session with the scheduler: one long-lived stream, tasks
//! fetched, queued and run on a pool of threads, results kept in the store.
//! Everything here runs on one task that owns the worker's state; fetches and
//! task runs report back to it through a channel.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daskrs_proto::scheduler_message::Msg as Down;
use daskrs_proto::worker_message::Msg as Up;
use daskrs_proto::{ComputeTask, WorkerBatch};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::WorkerConfig;
use crate::data::Data;
use crate::kinds::Registry;
use crate::metrics::Metrics;
use crate::peer::fetch_from;
use crate::store::Store;

/// gRPC channels to peers, one per address, made on first use.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let c = daskrs_proto::net::connect_lazy(addr).map_err(|e| e.to_string())?;
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// How a session with the scheduler ended.
pub enum SessionEnd {
    /// The scheduler told this worker to close, or it was shut down.
    Closed,
    /// The connection was lost; the worker reconnects and starts clean.
    Lost(String),
}

enum Stage {
    Fetching,
    Ready,
    Running,
}

struct Assigned {
    compute: ComputeTask,
    stage: Stage,
    fetched: HashMap<(u64, Option<u32>), Data>,
    pending_fetches: usize,
    missing: Vec<u64>,
    transfer_bytes: u64,
    cancelled: bool,
}

enum Event {
    Fetched {
        task: u64,
        input: (u64, Option<u32>),
        result: Result<Data, String>,
    },
    Done {
        task: u64,
        ran: Ran,
    },
    Replica {
        task: u64,
        result: Result<u64, String>,
    },
}

/// Tasks handed to the thread pool per thread: one running, one waiting.
pub const PREFETCH_PER_THREAD: usize = 2;

pub struct Shared {
    pub config: WorkerConfig,
    pub pool: crate::pool::Pool,
    pub registry: Registry,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub channels: Channels,
    /// The peer address other workers reach this one at.
    pub address: String,
    pub ready: watch::Sender<bool>,
}

/// One session: registers, then serves the scheduler until the stream ends.
pub async fn session(shared: &Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> SessionEnd {
    let cfg = &shared.config;
    let channel = match daskrs_proto::net::connect(&cfg.scheduler).await {
        Ok(c) => c,
        Err(e) => return SessionEnd::Lost(e.to_string()),
    };
    let mut client = daskrs_proto::limits!(
        daskrs_proto::worker_control_client::WorkerControlClient::new(channel)
    );
    let (up_tx, up_rx) = mpsc::unbounded_channel::<WorkerBatch>();
    let register = Up::Register(daskrs_proto::Register {
        name: cfg.name.clone(),
        address: shared.address.clone(),
        nthreads: cfg.nthreads,
        memory_limit: cfg.memory_limit,
        kinds: shared.registry.names(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    });
    let _ = up_tx.send(daskrs_proto::worker_batch(vec![register]));
    let mut inbound = match client
        .attach(tokio_stream::wrappers::UnboundedReceiverStream::new(up_rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return SessionEnd::Lost(format!("scheduler refused the worker: {}", s.message()));
        }
    };
    // The welcome opens the first batch; tasks the scheduler assigned at
    // registration may follow it in the same batch.
    let (heartbeat_every, first_batch) = match inbound.next().await {
        Some(Ok(batch)) => {
            let mut msgs = batch.messages.into_iter().filter_map(|m| m.msg);
            match msgs.next() {
                Some(Down::Welcome(w)) => {
                    tracing::info!(worker_id = w.worker_id, scheduler = %cfg.scheduler, "registered with the scheduler");
                    let every = Duration::from_millis(w.heartbeat_interval_ms.max(50));
                    (every, msgs.collect::<Vec<_>>())
                }
                _ => return SessionEnd::Lost("scheduler did not answer the registration".into()),
            }
        }
        Some(Err(s)) => return SessionEnd::Lost(s.message().to_string()),
        None => return SessionEnd::Lost("scheduler closed the stream".into()),
    };
    shared.metrics.connected.set(1);
    let _ = shared.ready.send(true);

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut s = Session {
        shared: shared.clone(),
        tasks: HashMap::new(),
        ready: BinaryHeap::new(),
        running: 0,
        out: Vec::new(),
        ev_tx,
        paused: false,
        process_over_pause: false,
        executed: 0,
        retiring: false,
        external: HashMap::new(),
    };
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut retire_deadline: Option<Instant> = None;
    let mut closed = false;
    for m in first_batch {
        closed |= s.handle(m);
    }
    let end = loop {
        if closed {
            break SessionEnd::Closed;
        }
        s.dispatch();
        if !s.out.is_empty() {
            let batch = daskrs_proto::worker_batch(std::mem::take(&mut s.out));
            if up_tx.send(batch).is_err() {
                break SessionEnd::Lost("stream to the scheduler closed".into());
            }
        }
        tokio::select! {
            msg = inbound.next() => match msg {
                Some(Ok(batch)) => {
                    for m in batch.messages.into_iter().filter_map(|m| m.msg) {
                        closed |= s.handle(m);
                    }
                }
                Some(Err(status)) => break SessionEnd::Lost(status.message().to_string()),
                None => break SessionEnd::Lost("scheduler closed the stream".into()),
            },
            Some(ev) = ev_rx.recv() => {
                s.event(ev);
                while let Ok(ev) = ev_rx.try_recv() {
                    s.event(ev);
                }
            }
            _ = heartbeat.tick() => {
                s.heartbeat();
                if retire_deadline.is_some_and(|d| Instant::now() > d) {
                    tracing::warn!("hand-off did not finish in time; closing anyway");
                    break SessionEnd::Closed;
                }
            }
            changed = shutdown.changed(), if !s.retiring => {
                if changed.is_err() || *shutdown.borrow() {
                    // Drain: ask to hand off results first; the scheduler closes us.
                    s.retiring = true;
                    s.out.push(Up::RetireMe(daskrs_proto::RetireMe { reason: "shutting down".into() }));
                    retire_deadline = Some(Instant::now() + cfg.shutdown_timeout);
                }
            }
        }
    };
    // Results that hold uploads are not let go of when the session is lost:
    // a commit running elsewhere may be completing those uploads. What no
    // commit completes is left to the bucket's lifecycle rule.
    shared.metrics.connected.set(0);
    let _ = shared.ready.send(false);
    end
}

struct Session {
    shared: Arc<Shared>,
    tasks: HashMap<u64, Assigned>,
    ready: BinaryHeap<Reverse<(i64, u64)>>,
    running: usize,
    out: Vec<Up>,
    ev_tx: mpsc::UnboundedSender<Event>,
    paused: bool,
    /// The process's resident memory was over the pause threshold at the
    /// last heartbeat (read then, not on every dispatch).
    process_over_pause: bool,
    executed: u64,
    retiring: bool,
    /// Results held here that hold something outside the worker, with the
    /// kind that lets go of it when they are dropped.
    external: HashMap<u64, Arc<dyn crate::kinds::TaskKind>>,
}

impl Session {
    /// Handles one message from the scheduler; true when told to close.
    fn handle(&mut self, msg: Down) -> bool {
        match msg {
            Down::Welcome(_) => {}
            Down::Compute(c) => self.compute(c),
            Down::Free(f) => {
                for id in f.task_ids {
                    if let Some(t) = self.tasks.get_mut(&id)
                        && matches!(t.stage, Stage::Running)
                    {
                        // It may have stored its result already: its end
                        // drops that, and lets go of what it holds.
                        t.cancelled = true;
                        continue;
                    }
                    self.tasks.remove(&id);
                    if let Some(kind) = self.external.remove(&id) {
                        self.release(id, kind);
                    }
                    self.shared.store.remove(id);
                }
            }
            Down::Steal(r) => {
                let stolen = match self.tasks.get(&r.task_id) {
                    Some(t) => !matches!(t.stage, Stage::Running),
                    None => false,
                };
                if stolen {
                    self.tasks.remove(&r.task_id);
                }
                self.out
                    .push(Up::StealResponse(daskrs_proto::StealResponse {
                        task_id: r.task_id,
                        stolen,
                    }));
            }
            Down::FetchReplica(r) => {
                let shared = self.shared.clone();
                let tx = self.ev_tx.clone();
                tokio::spawn(async move {
                    let result =
                        match fetch_from(&shared.channels, r.task_id, None, &r.addresses).await {
                            Ok(d) => {
                                let n = d.len();
                                shared.metrics.transfer_bytes.inc_by(n);
                                let store = shared.store.clone();
                                tokio::task::spawn_blocking(move || store.put(r.task_id, d))
                                    .await
                                    .map_err(|e| e.to_string())
                                    .and_then(|r| r.map_err(|e| e.to_string()))
                                    .map(|_| n)
                            }
                            Err(e) => Err(e),
                        };
                    let _ = tx.send(Event::Replica {
                        task: r.task_id,
                        result,
                    });
                });
            }
            Down::Close(c) => {
                tracing::info!(reason = %c.reason, "scheduler closed this worker");
                return true;
            }
        }
        false
    }

    fn compute(&mut self, c: ComputeTask) {
        let id = c.task_id;
        let store = &self.shared.store;
        let mut pending = 0;
        let mut missing = Vec::new();
        let mut distinct: Vec<(u64, Option<u32>)> = input_pieces(&c).collect();
        distinct.sort_unstable();
        distinct.dedup();
        for input in distinct {
            if store.contains(input.0) {
                continue;
            }
            let Some(loc) = c.locations.iter().find(|l| l.task_id == input.0) else {
                missing.push(input.0);
                continue;
            };
            pending += 1;
            let addrs = loc.addresses.clone();
            let shared = self.shared.clone();
            let tx = self.ev_tx.clone();
            tokio::spawn(async move {
                let result = fetch_from(&shared.channels, input.0, input.1, &addrs).await;
                let _ = tx.send(Event::Fetched {
                    task: id,
                    input,
                    result,
                });
            });
        }
        let priority = c.priority;
        let mut a = Assigned {
            compute: c,
            stage: Stage::Fetching,
            fetched: HashMap::new(),
            pending_fetches: pending,
            missing,
            transfer_bytes: 0,
            cancelled: false,
        };
        if pending == 0 {
            if !a.missing.is_empty() {
                self.report_missing(id, a.missing);
                return;
            }
            a.stage = Stage::Ready;
            self.ready.push(Reverse((priority, id)));
        }
        self.tasks.insert(id, a);
    }

    fn report_missing(&mut self, id: u64, missing: Vec<u64>) {
        self.out.push(Up::Erred(daskrs_proto::TaskErred {
            task_id: id,
            error: format!("inputs {missing:?} could not be fetched"),
            missing_inputs: missing,
        }));
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Fetched {
                task,
                input,
                result,
            } => {
                let Some(t) = self.tasks.get_mut(&task) else {
                    return;
                };
                t.pending_fetches -= 1;
                match result {
                    Ok(d) => {
                        t.transfer_bytes += d.len();
                        self.shared.metrics.transfer_bytes.inc_by(d.len());
                        t.fetched.insert(input, d);
                    }
                    Err(e) => {
                        tracing::warn!(task = %t.compute.key, input = input.0, error = %e, "could not fetch input");
                        t.missing.push(input.0);
                    }
                }
                if t.pending_fetches == 0 {
                    if t.missing.is_empty() {
                        t.stage = Stage::Ready;
                        self.ready.push(Reverse((t.compute.priority, task)));
                    } else {
                        let missing = std::mem::take(&mut t.missing);
                        self.tasks.remove(&task);
                        self.report_missing(task, missing);
                    }
                }
            }
            Event::Done { task, ran } => {
                let Ran {
                    result,
                    format,
                    duration,
                    external,
                } = ran;
                self.running -= 1;
                let Some(t) = self.tasks.remove(&task) else {
                    return;
                };
                if t.cancelled {
                    if let Some(kind) = external {
                        self.release(task, kind);
                    }
                    self.shared.store.remove(task);
                    return;
                }
                if let Some(kind) = external {
                    self.external.insert(task, kind);
                }
                self.shared.metrics.task_duration.observe(duration);
                match result {
                    Ok(nbytes) => {
                        self.executed += 1;
                        self.shared.metrics.tasks_executed.inc();
                        self.out.push(Up::Finished(daskrs_proto::TaskFinished {
                            task_id: task,
                            nbytes,
                            format,
                            duration,
                            transfer_bytes: t.transfer_bytes,
                        }));
                    }
                    Err(error) => {
                        self.shared.metrics.tasks_failed.inc();
                        self.out.push(Up::Erred(daskrs_proto::TaskErred {
                            task_id: task,
                            error,
                            missing_inputs: vec![],
                        }));
                    }
                }
            }
            Event::Replica { task, result } => match result {
                Ok(nbytes) => self.out.push(Up::ReplicaAdded(daskrs_proto::ReplicaAdded {
                    task_id: task,
                    nbytes,
                })),
                Err(error) => self
                    .out
                    .push(Up::ReplicaFailed(daskrs_proto::ReplicaFailed {
                        task_id: task,
                        error,
                    })),
            },
        }
    }

    /// Starts ready tasks on free threads, best first, unless paused.
    fn dispatch(&mut self) {
        let paused = self.shared.store.over_pause() || self.process_over_pause;
        if paused != self.paused {
            self.paused = paused;
            tracing::info!(
                paused,
                memory = self.shared.store.memory_bytes(),
                "memory pause changed"
            );
            self.heartbeat();
        }
        let limit = self.shared.config.nthreads as usize * PREFETCH_PER_THREAD;
        while !self.paused && self.running < limit {
            let Some(Reverse((_, id))) = self.ready.pop() else {
                break;
            };
            let Some(t) = self.tasks.get_mut(&id) else {
                continue; // stolen or freed while queued
            };
            if !matches!(t.stage, Stage::Ready) {
                continue;
            }
            t.stage = Stage::Running;
            self.running += 1;
            let compute = t.compute.clone();
            let fetched = std::mem::take(&mut t.fetched);
            let shared = self.shared.clone();
            let tx = self.ev_tx.clone();
            let generation = shared.store.generation();
            self.shared.pool.submit(move || {
                let ran = run_task(&shared, generation, &compute, fetched);
                let _ = tx.send(Event::Done {
                    task: compute.task_id,
                    ran,
                });
            });
        }
    }

    /// Hands a dropped result to its kind to let go of what it holds
    /// outside the worker; call before removing it from the store. A result
    /// that a task or a peer read is theirs to finish (a commit completing
    /// an upload): it is left alone.
    fn release(&self, id: u64, kind: Arc<dyn crate::kinds::TaskKind>) {
        if self.shared.store.is_claimed(id) {
            return;
        }
        let data = match self.shared.store.get(id) {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(task = id, error = %e, "cannot read a result to release it");
                return;
            }
        };
        tokio::task::spawn_blocking(move || kind.release(&data));
    }

    fn heartbeat(&mut self) {
        if self.shared.config.pause_on_process_memory {
            let limit = self.shared.config.memory_limit as f64 * crate::store::PAUSE_FRACTION;
            self.process_over_pause = resident_bytes().is_some_and(|rss| rss as f64 > limit);
        }
        let store = &self.shared.store;
        let m = &self.shared.metrics;
        let (memory, spilled) = (store.memory_bytes(), store.spilled_bytes());
        m.memory_bytes.set(memory as i64);
        m.spilled_bytes.set(spilled as i64);
        m.held_results.set(store.len() as i64);
        m.paused.set(i64::from(self.paused));
        self.out.push(Up::Heartbeat(daskrs_proto::Heartbeat {
            memory_bytes: memory,
            spilled_bytes: spilled,
            paused: self.paused,
            executed: self.executed,
        }));
    }
}

/// How a task run ended.
struct Ran {
    /// The result's size, stored.
    result: Result<u64, String>,
    format: i32,
    duration: f64,
    /// The kind, when the stored result holds something outside the worker.
    external: Option<Arc<dyn crate::kinds::TaskKind>>,
}

/// Runs one task on the current (blocking) thread and stores its result.
fn run_task(
    shared: &Shared,
    generation: u64,
    c: &ComputeTask,
    fetched: HashMap<(u64, Option<u32>), Data>,
) -> Ran {
    let started = Instant::now();
    let kind = shared.registry.get(&c.kind);
    let result = (|| {
        let kind = kind
            .clone()
            .ok_or_else(|| format!("this worker has no task kind {:?}", c.kind))?;
        let mut inputs = Vec::with_capacity(c.inputs.len());
        for (id, part) in input_pieces(c) {
            let d = match fetched.get(&(id, part)) {
                Some(d) => d.clone(),
                None => {
                    let whole = shared
                        .store
                        .claim(id)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("input {id} is no longer held by this worker"))?;
                    match part {
                        Some(p) => whole.piece(p).map_err(|e| format!("input {id}: {e}"))?,
                        None => whole,
                    }
                }
            };
            inputs.push(d);
        }
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kind.run(&c.payload, &inputs)
        }))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("task kind {:?} panicked: {msg}", c.kind)
        })??;
        Ok(out)
    })();
    let duration = started.elapsed().as_secs_f64();
    let failed = |e: String| Ran {
        result: Err(e),
        format: 0,
        duration,
        external: None,
    };
    let data = match result {
        Ok(data) => data,
        Err(e) => return failed(e),
    };
    let (n, format) = (data.len(), data.format as i32);
    let external = kind.filter(|k| k.holds_external(&c.payload));
    let copy = external.as_ref().map(|_| data.clone());
    match shared.store.put_in(generation, c.task_id, data) {
        Ok(true) => Ran {
            result: Ok(n),
            format,
            duration,
            external,
        },
        kept => {
            // Not kept (the store was cleared for a new session, or failed):
            // nobody will ever commit what it holds, so let go of it here.
            if let (Some(kind), Some(data)) = (&external, &copy) {
                kind.release(data);
            }
            match kept {
                Ok(_) => Ran {
                    result: Ok(n),
                    format,
                    duration,
                    external: None,
                },
                Err(e) => failed(e.to_string()),
            }
        }
    }
}

/// A task's inputs in order, each with the piece of it to take.
fn input_pieces(c: &ComputeTask) -> impl Iterator<Item = (u64, Option<u32>)> + '_ {
    c.inputs.iter().enumerate().map(|(i, id)| {
        let part = c.input_parts.get(i).and_then(|p| u32::try_from(*p).ok());
        (*id, part)
    })
}

/// This process's resident memory, from /proc (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
