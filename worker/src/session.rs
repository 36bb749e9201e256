//! The worker's session with the scheduler: one long-lived stream;
//! assignments come down, completions, failures and heartbeats go up in
//! batches. Everything here runs on one task that owns the session's state;
//! fetches and task runs report back to it through a channel. Nothing here
//! waits for the disk: the store spills and unlinks outside its lock, and
//! spilled results are read on blocking threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daskrs_core::{Assignment, Input};
use daskrs_proto::WorkerBatch;
use daskrs_proto::net::Channels;
use daskrs_proto::scheduler_message::Msg as Down;
use daskrs_proto::worker_message::Msg as Up;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::data::Data;
use crate::execute::{Ran, run_batch};
use crate::kinds::Registry;
use crate::metrics::Metrics;
use crate::peer::{Fetcher, fetch_from};
use crate::release::{Releases, release};
use crate::store::Store;
use crate::tasks::{Admitted, AfterFetch, Freed, Tasks};
use crate::{TaskError, WorkerConfig};

/// How a session with the scheduler ended.
pub enum SessionEnd {
    /// The scheduler told this worker to close, or it was shut down.
    Closed,
    /// The connection was lost; the worker reconnects and starts clean.
    Lost(String),
    /// The scheduler refused this worker's token: trying again would not help.
    Refused(String),
}

enum Event {
    Fetched {
        task: u64,
        input: Input,
        result: Result<Data, TaskError>,
    },
    Done {
        task: u64,
        ran: Ran,
    },
    Replica {
        task: u64,
        result: Result<u64, String>,
    },
    /// A job handed to the thread pool ended: all its tasks are done.
    JobEnded,
}

/// Tells the session that a job of the thread pool ended, when dropped.
struct JobEnded(mpsc::UnboundedSender<Event>);

impl Drop for JobEnded {
    fn drop(&mut self) {
        let _ = self.0.send(Event::JobEnded);
    }
}

/// Jobs (a task or a batch) handed to the thread pool per thread: one
/// running, one waiting.
pub const PREFETCH_PER_THREAD: usize = 2;
/// Tasks of a kind that batches go several to a job once they have run
/// shorter than this here on average ...
const BATCH_BELOW_SECONDS: f64 = 0.001;
/// ... a job of about this much work ...
const BATCH_SECONDS: f64 = 0.005;
/// ... and no more tasks than this.
const MAX_BATCH: usize = 128;

pub struct Shared {
    pub config: WorkerConfig,
    pub pool: crate::pool::Pool,
    pub registry: Registry,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub channels: Channels,
    /// Fetches inputs from peers, several to a call under load.
    pub fetcher: Fetcher,
    /// The peer address other workers reach this one at.
    pub address: String,
    pub ready: watch::Sender<bool>,
    /// The worker process's own resident bytes at the last memory sample
    /// (taken only when it counts: see [`sample_memory`]).
    pub process_bytes: std::sync::atomic::AtomicU64,
}

/// How long connecting and registering may take before the worker gives
/// up on that attempt and tries again.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

/// One session: registers, then serves the scheduler until the stream ends.
pub async fn session(shared: &Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> SessionEnd {
    let cfg = &shared.config;
    // Registering has a deadline: a connection that opens but never answers
    // (a proxy with no live backend, a scheduler shutting down) is given up
    // and tried again, not waited on forever.
    let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
    let late = || {
        SessionEnd::Lost(format!(
            "the scheduler did not answer the registration within {REGISTER_TIMEOUT:?}"
        ))
    };
    let channel = match tokio::time::timeout_at(
        deadline,
        daskrs_proto::net::connect(&cfg.scheduler, cfg.token.as_ref(), cfg.tls.as_ref()),
    )
    .await
    {
        Ok(Ok(c)) => c,
        // Another cluster's certificates: the same files cannot do better.
        Ok(Err(e)) if daskrs_proto::tls::refused_certificate(&e) => {
            return SessionEnd::Refused(daskrs_core::error_chain(&e));
        }
        Ok(Err(e)) => return SessionEnd::Lost(daskrs_core::error_chain(&e)),
        Err(_) => return late(),
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
        python: shared.registry.python_versions().to_string(),
    });
    let _ = up_tx.send(daskrs_proto::worker_batch(vec![register]));
    let attach = client.attach(tokio_stream::wrappers::UnboundedReceiverStream::new(up_rx));
    let mut inbound = match tokio::time::timeout_at(deadline, attach).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) if s.code() == tonic::Code::Unauthenticated => {
            return SessionEnd::Refused(s.message().to_string());
        }
        Ok(Err(s)) if daskrs_proto::tls::refused_certificate(&s) => {
            return SessionEnd::Refused(format!(
                "the scheduler refused this worker's certificate: {s}"
            ));
        }
        Ok(Err(s)) => {
            return SessionEnd::Lost(format!("scheduler refused the worker: {}", s.message()));
        }
        Err(_) => return late(),
    };
    // The welcome opens the first batch; tasks the scheduler assigned at
    // registration may follow it in the same batch.
    let welcome = match tokio::time::timeout_at(deadline, inbound.next()).await {
        Ok(w) => w,
        Err(_) => return late(),
    };
    let (heartbeat_every, first_batch) = match welcome {
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
        tasks: Tasks::default(),
        out: Vec::new(),
        ev_tx,
        paused: false,
        process_over_pause: false,
        executed: 0,
        retiring: false,
        releases: Releases::default(),
        jobs: 0,
        mean_seconds: HashMap::new(),
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
                // Memory outside the process was measured anew: pause or resume.
                s.dispatch();
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
    tasks: Tasks,
    out: Vec<Up>,
    ev_tx: mpsc::UnboundedSender<Event>,
    paused: bool,
    /// The process's resident memory was over the pause threshold at the
    /// last heartbeat (read then, not on every dispatch).
    process_over_pause: bool,
    executed: u64,
    retiring: bool,
    releases: Releases,
    /// Jobs handed to the thread pool and not yet ended.
    jobs: usize,
    /// Each kind's mean run time here, for batching.
    mean_seconds: HashMap<Arc<str>, f64>,
}

impl Session {
    /// Handles one message from the scheduler; true when told to close.
    fn handle(&mut self, msg: Down) -> bool {
        match msg {
            Down::Welcome(_) => {}
            Down::Compute(c) => {
                let (id, key) = (c.task_id, c.key.clone());
                match Assignment::try_from(c) {
                    Ok(a) => self.compute(a),
                    Err(e) => self.out.push(Up::Erred(daskrs_proto::TaskErred {
                        task_id: id,
                        error: format!("task {key:?} arrived malformed: {e}"),
                        missing_inputs: vec![],
                        exception: Default::default(),
                    })),
                }
            }
            Down::Free(f) => {
                for id in f.task_ids {
                    // A running task may store its result yet: its end
                    // drops that, and lets go of what it holds.
                    match self.tasks.free(id) {
                        Freed::Forgotten => self.releases.drop_result(&self.shared.store, id),
                        Freed::Running => {
                            let kind = self.tasks.kind_of(id);
                            if let Some(kind) = kind.and_then(|k| self.shared.registry.get(&k)) {
                                kind.cancel(id);
                            }
                        }
                    }
                }
            }
            Down::Steal(r) => {
                let stolen = self.tasks.steal(r.task_id);
                self.out
                    .push(Up::StealResponse(daskrs_proto::StealResponse {
                        task_id: r.task_id,
                        stolen,
                    }));
            }
            Down::FetchReplica(r) => self.fetch_replica(r.task_id, r.addresses),
            Down::Close(c) => {
                tracing::info!(reason = %c.reason, "scheduler closed this worker");
                return true;
            }
        }
        false
    }

    fn compute(&mut self, a: Assignment) {
        let id = a.task;
        let store = self.shared.store.clone();
        match self.tasks.assign(a, |input| store.contains(input)) {
            Admitted::Ready => {}
            Admitted::Known => tracing::warn!(task = id, "ignoring a second assignment of a task"),
            Admitted::Missing(missing) => self.report_missing(id, missing),
            Admitted::Fetch(fetches) => {
                for (input, addresses) in fetches {
                    let shared = self.shared.clone();
                    let tx = self.ev_tx.clone();
                    tokio::spawn(async move {
                        let result = shared
                            .fetcher
                            .fetch(input.task, input.piece, &addresses)
                            .await;
                        let _ = tx.send(Event::Fetched {
                            task: id,
                            input,
                            result,
                        });
                    });
                }
            }
        }
    }

    /// Copies a result another worker holds here, for a retiring worker's hand-off.
    fn fetch_replica(&self, task: u64, addresses: Vec<String>) {
        let shared = self.shared.clone();
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            let result = match fetch_from(&shared.channels, task, None, &addresses).await {
                Ok(d) => {
                    let n = d.len();
                    shared.metrics.transfer_bytes.inc_by(n);
                    let store = shared.store.clone();
                    tokio::task::spawn_blocking(move || store.put(task, d))
                        .await
                        .map_err(|e| e.to_string())
                        .map(|_| n)
                }
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(Event::Replica { task, result });
        });
    }

    fn report_missing(&mut self, id: u64, missing: Vec<u64>) {
        self.out.push(Up::Erred(daskrs_proto::TaskErred {
            task_id: id,
            error: format!("inputs {missing:?} could not be fetched"),
            missing_inputs: missing,
            exception: Default::default(),
        }));
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Fetched {
                task,
                input,
                result,
            } => {
                let n = result.as_ref().map_or(0, Data::len);
                match self.tasks.fetched(task, input, result) {
                    AfterFetch::Gone => return,
                    AfterFetch::Missing(missing) => self.report_missing(task, missing),
                    AfterFetch::Waiting | AfterFetch::Ready => {}
                }
                self.shared.metrics.transfer_bytes.inc_by(n);
            }
            Event::Done { task, ran } => self.done(task, ran),
            Event::JobEnded => self.jobs = self.jobs.saturating_sub(1),
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

    fn done(&mut self, task: u64, ran: Ran) {
        let Ran {
            result,
            duration,
            stop,
            thread,
            external,
        } = ran;
        let Some(ended) = self.tasks.ended(task) else {
            return;
        };
        if result.is_ok() {
            self.observe(ended.kind.clone(), duration);
        }
        let store = &self.shared.store;
        if ended.cancelled {
            match external {
                Some(kind) => release(store, task, kind),
                None => store.remove(task),
            }
            return;
        }
        if let Some(kind) = external {
            self.releases.hold(task, kind);
        }
        self.shared.metrics.task_duration.observe(duration);
        match result {
            Ok((nbytes, format)) => {
                self.executed += 1;
                self.shared.metrics.tasks_executed.inc();
                self.out.push(Up::Finished(daskrs_proto::TaskFinished {
                    task_id: task,
                    nbytes,
                    format: daskrs_proto::convert::format_number(format),
                    duration,
                    transfer_bytes: ended.transfer_bytes,
                    waited: ended.waited,
                    stop,
                    fetch_start: ended.fetch.map_or(0.0, |f| f.0),
                    fetch_stop: ended.fetch.map_or(0.0, |f| f.1),
                    thread,
                }));
            }
            Err(error) => {
                tracing::debug!(task = %ended.key, %error, "task failed");
                self.shared.metrics.tasks_failed.inc();
                self.out.push(Up::Erred(daskrs_proto::TaskErred {
                    task_id: task,
                    error: error.to_string(),
                    missing_inputs: vec![],
                    exception: error.exception().to_vec(),
                }));
            }
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
        let threads = self.shared.config.nthreads.max(1) as usize;
        let limit = threads * PREFETCH_PER_THREAD;
        while !self.paused && self.jobs < limit {
            let Some(first) = self.tasks.start_next() else {
                break;
            };
            let mut batch = vec![first];
            let most = self.batch_size(&batch[0].assignment.kind, threads);
            while batch.len() < most {
                match self.tasks.start_next_of(&batch[0].assignment.kind) {
                    Some(next) => batch.push(next),
                    None => break,
                }
            }
            if batch.len() > 1 {
                self.shared.metrics.task_batches.inc();
            }
            self.jobs += 1;
            let shared = self.shared.clone();
            let tx = self.ev_tx.clone();
            let generation = shared.store.generation();
            self.shared.pool.submit(move || {
                // Sent however the job ends, so its slot is never lost.
                let _ended = JobEnded(tx.clone());
                run_batch(&shared, generation, batch, &mut |task, ran| {
                    let _ = tx.send(Event::Done { task, ran });
                });
            });
        }
    }

    /// How many ready tasks of `kind` one thread takes at a time: one,
    /// unless the kind batches and its tasks have been short here. A batch
    /// holds about `BATCH_SECONDS` of work, at most `MAX_BATCH` tasks, and
    /// no more than its share of what is ready, so that every thread gets
    /// some.
    fn batch_size(&self, kind: &Arc<str>, threads: usize) -> usize {
        let Some(&mean) = self.mean_seconds.get(kind) else {
            return 1;
        };
        if mean >= BATCH_BELOW_SECONDS
            || !self.shared.registry.get(kind).is_some_and(|k| k.batches())
        {
            return 1;
        }
        let by_time = (BATCH_SECONDS / mean.max(1e-6)) as usize;
        let share = (self.tasks.ready_len() + 1).div_ceil(threads);
        by_time.min(share).clamp(1, MAX_BATCH)
    }

    /// Folds a finished task's run time into its kind's running mean.
    fn observe(&mut self, kind: Arc<str>, seconds: f64) {
        self.mean_seconds
            .entry(kind)
            .and_modify(|m| *m += (seconds - *m) * 0.1)
            .or_insert(seconds);
    }

    fn heartbeat(&mut self) {
        if self.paused && self.tasks.running() == 0 {
            // Paused with nothing running: idle executors may be what holds
            // the memory (a Python process seldom gives all of it back).
            self.shared.registry.trim();
            // Measured again at once, not at the guard's next look.
            sample_memory(&self.shared);
        }
        let store = &self.shared.store;
        let m = &self.shared.metrics;
        let (memory, spilled, outside) =
            (store.memory_bytes(), store.spilled_bytes(), store.outside());
        // The process's own memory where it is its own (one worker per
        // process), else its results'.
        let own = if self.shared.config.pause_on_process_memory {
            let own = self
                .shared
                .process_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            self.process_over_pause = own + outside > store.pause_bytes();
            own
        } else {
            memory
        };
        m.memory_bytes.set(memory as i64);
        m.spilled_bytes.set(spilled as i64);
        m.held_results.set(store.len() as i64);
        m.paused.set(i64::from(self.paused));
        self.out.push(Up::Heartbeat(daskrs_proto::Heartbeat {
            memory_bytes: memory + outside,
            spilled_bytes: spilled,
            paused: self.paused,
            executed: self.executed,
            managed_bytes: memory,
            process_bytes: own + outside,
            pause_bytes: store.pause_bytes(),
            spills: store
                .take_spills()
                .into_iter()
                .map(|s| daskrs_proto::Spill {
                    start: s.start,
                    stop: s.stop,
                    bytes: s.bytes,
                })
                .collect(),
        }));
    }
}

/// How often the memory guard looks; a task allocating fast outgrows the
/// limit by at most what it allocates in this time.
const GUARD_EVERY: Duration = Duration::from_millis(100);

/// Samples the memory of the worker's task processes, and the worker's own
/// where it counts (one worker per process), for the heartbeat, spilling
/// and pausing; returns `(own, outside)`. Several workers in one process
/// (`daskrs local`) count their results only.
fn sample_memory(shared: &Shared) -> (u64, u64) {
    let outside = shared.registry.resident_bytes();
    shared.store.set_outside(outside);
    let own = if shared.config.pause_on_process_memory {
        let rss = resident_bytes("self").unwrap_or(0);
        shared
            .process_bytes
            .store(rss, std::sync::atomic::Ordering::Relaxed);
        rss
    } else {
        shared.store.memory_bytes()
    };
    (own, outside)
}

/// Samples memory every [`GUARD_EVERY`] (see [`sample_memory`]) and keeps
/// the worker within its limit whatever user code does: when the worker
/// and its task processes together pass
/// [`crate::store::TERMINATE_FRACTION`] of the limit, the task process that
/// holds the most memory is stopped (its task fails, or runs again per its
/// retries), before the kernel has to end anything.
pub async fn memory_guard(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let limit = shared.config.memory_limit;
    let over =
        |total: u64| limit > 0 && total as f64 > limit as f64 * crate::store::TERMINATE_FRACTION;
    let mut tick = tokio::time::interval(GUARD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (own, outside) = sample_memory(&shared);
        if outside == 0 || !over(own + outside) {
            continue;
        }
        // Idle task processes go first: they cost nothing but a restart.
        shared.registry.trim();
        let (own, outside) = sample_memory(&shared);
        let total = own + outside;
        if !over(total) {
            continue;
        }
        let why = |rss: u64| {
            format!(
                "it held {} when the worker and its tasks used {} of its {} memory limit",
                daskrs_core::ByteSize(rss),
                daskrs_core::ByteSize(total),
                daskrs_core::ByteSize(limit)
            )
        };
        // A small task process is not what fills the worker: its results
        // are, and spilling deals with them.
        if let Some(rss) = shared.registry.stop_largest(limit / 10, why) {
            tracing::warn!(
                task_process_bytes = rss,
                total_bytes = total,
                limit_bytes = limit,
                "memory limit reached: stopped the task process holding the most memory"
            );
        }
    }
}

/// A process's resident memory (`self` or a pid), from /proc (Linux); in
/// kB there, whatever the page size.
pub(crate) fn resident_bytes(process: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
