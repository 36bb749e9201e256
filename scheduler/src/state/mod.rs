//! The scheduler's state machine: plain synchronous Rust, driven by events
//! (a graph submitted, a task finished, a worker lost, a clock tick) and
//! answering with messages collected in an outbox that the services send
//! after the transition, in batches.
//!
//! Task states follow Dask's: released -> waiting -> queued -> processing ->
//! memory | erred, and forgotten when the graph is released (in a session,
//! when neither the client nor a task needs it). A result is dropped from
//! every worker as soon as `refs` (dependents that still need it, plus the
//! client while it wants the result) reaches zero.

mod adaptive;
mod graph;
mod outbox;
mod placement;
mod retire;
mod session;
mod stream;
mod task;
#[cfg(test)]
mod tests;
mod worker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daskrs_core::{DataFormat, TaskState};

pub use daskrs_core::Priority;
pub use graph::{Graph, LocateError, OutputInfo, Prefix, PrefixTotals, QueryInfo, Submission};
pub use outbox::{GraphEvent, Outbox, ToWorker};
pub use stream::{DEFAULT_TASK_STREAM_LEN, Record, TaskStream, What};
pub use task::{Failure, GraphId, Task, TaskId, WorkerId};
pub use worker::{
    MEMORY_HISTORY_SECONDS, MemorySample, Registration, RemoveReason, WorkerReport, WorkerState,
    WorkerStatus,
};

/// Expected run time of a task kind never seen before, as Dask assumes.
const DEFAULT_ESTIMATE: f64 = 0.5;
/// A worker whose threads are busy still gets new tasks while its queued work
/// is expected to take less than this per thread: short tasks are pipelined
/// so a worker never waits a round trip for its next task.
const PIPELINE_SECONDS: f64 = 0.005;
/// The most tasks a worker holds per thread, however short they are.
const MAX_WINDOW_PER_THREAD: usize = 512;
/// A worker that dies this many times while running a task fails the task.
pub const MAX_SUSPICIOUS: u32 = 3;
/// Bytes per second assumed between workers, to weigh a task's inputs
/// held elsewhere against the work queued on a worker (Dask's default).
const BANDWIDTH: f64 = 100e6;
/// Seconds to fetch an input from a peer however small: a round trip, and
/// the bookkeeping on both workers.
const FETCH_SECONDS: f64 = 0.001;
/// Tasks expected to run shorter than this are not worth stealing.
const MIN_STEAL_SECONDS: f64 = 0.005;

/// What a worker reports about a task it finished.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished {
    pub task: TaskId,
    /// Size of the result it keeps.
    pub nbytes: u64,
    pub format: DataFormat,
    /// Seconds the task ran, fetching excluded.
    pub duration: f64,
    /// Bytes of inputs it fetched from peers for the task.
    pub transfer_bytes: u64,
    /// Seconds it waited on the worker before it ran: fetching, then a thread.
    pub waited: f64,
    /// When it ended, on the scheduler's clock ([`daskrs_core::clock`]).
    pub stop: f64,
    /// The worker's thread that ran it.
    pub thread: u32,
    /// When its inputs were fetched from peers, on the scheduler's clock.
    pub fetch: Option<(f64, f64)>,
}

/// A worker's report that a task failed: its error, and what user code
/// raised, serialized (empty for the runtime's own errors).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFailure {
    pub error: String,
    pub exception: bytes::Bytes,
}

impl From<String> for TaskFailure {
    fn from(error: String) -> Self {
        TaskFailure {
            error,
            exception: bytes::Bytes::new(),
        }
    }
}

impl From<&str> for TaskFailure {
    fn from(error: &str) -> Self {
        error.to_string().into()
    }
}

/// Settings of the state machine.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// A worker silent for this long is removed.
    pub worker_ttl: Duration,
    /// The most tasks held at once, over all graphs and sessions: a graph
    /// that would pass it is refused. Each task costs the scheduler a few
    /// hundred bytes, so this bounds what clients can make it hold.
    pub max_tasks: usize,
    /// Records the task stream keeps (see [`TaskStream`]).
    pub task_stream_len: usize,
}

/// The default of [`StateConfig::max_tasks`].
pub const DEFAULT_MAX_TASKS: usize = 4_000_000;

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            worker_ttl: Duration::from_secs(30),
            max_tasks: DEFAULT_MAX_TASKS,
            task_stream_len: DEFAULT_TASK_STREAM_LEN,
        }
    }
}

/// Figures the state machine keeps for metrics.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub tasks_finished: u64,
    pub tasks_erred: u64,
    pub transfer_bytes: u64,
    pub workers_lost: u64,
    pub tasks_recomputed: u64,
    pub steals: u64,
}

#[derive(Debug)]
pub struct State {
    pub config: StateConfig,
    pub tasks: HashMap<TaskId, Task>,
    pub graphs: HashMap<GraphId, Graph>,
    pub workers: HashMap<WorkerId, WorkerState>,
    /// Tasks ready to run, best first. Entries whose task left the queued
    /// state are skipped when they surface.
    queue: BinaryHeap<Reverse<(Priority, TaskId)>>,
    /// Queued tasks of a kind no worker runs, set aside until one joins
    /// (Dask's "no-worker"); stale entries are dropped when they return.
    no_worker: Vec<Reverse<(Priority, TaskId)>>,
    /// Tasks with a steal request out; stale entries are dropped lazily.
    stealing: Vec<TaskId>,
    /// The worker that took the last task without dependencies, per graph:
    /// neighbouring root tasks go to the same worker while it has room, so
    /// the tasks that combine them find their inputs local.
    last_root: Option<(GraphId, WorkerId)>,
    counts: [u64; TaskState::ALL.len()],
    /// Each task kind's name, shared by its tasks.
    kinds: HashSet<Arc<str>>,
    next_task: TaskId,
    next_graph: GraphId,
    next_worker: WorkerId,
    pub totals: Totals,
    /// What the workers' threads did lately, for the dashboard.
    pub stream: TaskStream,
    pub outbox: Outbox,
    /// Last tick at which any task was waiting, queued or processing.
    last_busy: Instant,
}

impl State {
    pub fn new(config: StateConfig) -> Self {
        State {
            stream: TaskStream::new(config.task_stream_len),
            config,
            tasks: HashMap::new(),
            graphs: HashMap::new(),
            workers: HashMap::new(),
            queue: BinaryHeap::new(),
            no_worker: Vec::new(),
            stealing: Vec::new(),
            last_root: None,
            counts: [0; TaskState::ALL.len()],
            kinds: HashSet::new(),
            next_task: 1,
            next_graph: 1,
            next_worker: 1,
            totals: Totals::default(),
            outbox: Outbox::default(),
            last_busy: Instant::now(),
        }
    }

    /// Takes the messages produced since the last call.
    pub fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.outbox)
    }

    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[state as usize]
    }

    pub fn bytes_held(&self) -> u64 {
        self.workers.values().map(|w| w.nbytes).sum()
    }

    fn set_state(&mut self, id: TaskId, new: TaskState) {
        let t = self.tasks.get_mut(&id).expect("set_state on a known task");
        let old = t.state;
        t.state = new;
        self.counts[old as usize] -= 1;
        self.counts[new as usize] += 1;
        if let Some(g) = self.graphs.get_mut(&t.graph) {
            g.recount(t.prefix, Some(old), Some(new));
            g.dirty = true;
        }
    }

    /// A task's expected run time: the mean of the tasks of its prefix that
    /// finished in its graph (as Dask does by prefix). Until one has, the
    /// default: a prefix, such as a SQL query's stage, may run far longer
    /// than anything seen before, and a task assumed short is queued behind
    /// busy threads while others sit idle.
    fn estimate(&self, t: &Task) -> f64 {
        self.graphs
            .get(&t.graph)
            .and_then(|g| g.mean_seconds(t.prefix))
            .unwrap_or(DEFAULT_ESTIMATE)
    }

    fn enqueue(&mut self, id: TaskId) {
        self.set_state(id, TaskState::Queued);
        let t = &self.tasks[&id];
        self.queue.push(Reverse((t.priority, id)));
    }

    /// Makes sure `root` will be computed: when it has no result and is not
    /// on its way, it waits for its dependencies, computing again those whose
    /// results were dropped or lost.
    fn need(&mut self, root: TaskId) {
        let mut stack = vec![root];
        // In a session, a dependency may have erred after its dependents
        // were computed: what needs it now errs the same way.
        let mut erred = Vec::new();
        while let Some(id) = stack.pop() {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            if t.state != TaskState::Released {
                continue;
            }
            if !t.holds_deps {
                // Its dependencies are needed again until it finishes.
                t.holds_deps = true;
                let deps = t.deps.clone();
                for d in &deps {
                    if let Some(dt) = self.tasks.get_mut(d) {
                        dt.refs += 1;
                    }
                }
            }
            let t = self.tasks.get_mut(&id).expect("task exists");
            if t.done {
                // Computed before, but the result is gone.
                t.done = false;
                let (graph, prefix) = (t.graph, t.prefix);
                self.totals.tasks_recomputed += 1;
                if let Some(g) = self.graphs.get_mut(&graph) {
                    g.count_done(prefix, false);
                }
            }
            let t = &self.tasks[&id];
            let missing: Vec<TaskId> = t
                .deps
                .iter()
                .copied()
                .filter(|d| self.tasks.get(d).is_some_and(|dt| !dt.in_memory()))
                .collect();
            let n_missing = missing.len() as u32;
            self.tasks.get_mut(&id).expect("task exists").waiting_on = n_missing;
            if n_missing == 0 {
                self.enqueue(id);
            } else {
                self.set_state(id, TaskState::Waiting);
                erred.extend(
                    missing
                        .iter()
                        .filter(|d| self.tasks[d].state == TaskState::Erred),
                );
                stack.extend(missing);
            }
        }
        for e in erred {
            if let Some(failure) = self.tasks.get(&e).and_then(|t| t.failure.as_deref()) {
                let failure = failure.clone();
                self.spread_failure(e, failure);
            }
        }
    }

    /// Drops a result nobody needs any more from every worker holding it.
    fn release_result(&mut self, id: TaskId) {
        if self.drop_copies(id) {
            self.set_state(id, TaskState::Released);
        }
    }

    /// Tells every holder of an in-memory result to drop it; false when the
    /// task has no result in memory.
    fn drop_copies(&mut self, id: TaskId) -> bool {
        let Some(t) = self.tasks.get_mut(&id) else {
            return false;
        };
        if t.state != TaskState::Memory {
            return false;
        }
        let holders = std::mem::take(&mut t.who_has);
        let nbytes = t.nbytes;
        for w in holders {
            if let Some(ws) = self.workers.get_mut(&w) {
                ws.has_what.remove(&id);
                ws.nbytes -= nbytes;
            }
            self.outbox.to_workers.push((w, ToWorker::Free(id)));
        }
        true
    }

    /// A worker finished a task it was given.
    pub fn task_finished(&mut self, worker: WorkerId, done: Finished) {
        let Finished {
            task: id,
            nbytes,
            format,
            duration,
            transfer_bytes,
            waited,
            stop,
            thread,
            fetch,
        } = done;
        if !self.take_from_processing(worker, id) {
            // Cancelled, stolen or forgotten meanwhile: the worker must not keep it.
            self.outbox.to_workers.push((worker, ToWorker::Free(id)));
            return;
        }
        self.totals.tasks_finished += 1;
        self.totals.transfer_bytes += transfer_bytes;
        let t = self.tasks.get_mut(&id).expect("processing task exists");
        t.who_has.push(worker);
        t.nbytes = nbytes;
        t.format = format;
        t.done = true;
        t.holds_deps = false;
        t.suspicious = 0;
        let graph = t.graph;
        let prefix = t.prefix;
        let wanted = t.wanted;
        let refs = t.refs;
        // Taken out and put back below: no allocation on this hot path.
        let deps = std::mem::take(&mut t.deps);
        let dependents = std::mem::take(&mut t.dependents);
        self.set_state(id, TaskState::Memory);
        if let Some(w) = self.workers.get_mut(&worker) {
            w.has_what.insert(id);
            w.nbytes += nbytes;
        }
        for &d in &dependents {
            let dt = self.tasks.get_mut(&d).expect("dependent exists");
            if dt.state == TaskState::Waiting {
                dt.waiting_on -= 1;
                if dt.waiting_on == 0 {
                    self.enqueue(d);
                }
            }
        }
        for &d in &deps {
            let dt = self.tasks.get_mut(&d).expect("dependency exists");
            dt.refs -= 1;
            if dt.refs == 0 {
                self.release_result(d);
            }
        }
        let t = self.tasks.get_mut(&id).expect("finished task exists");
        t.deps = deps;
        t.dependents = dependents;
        if let Some(g) = self.graphs.get_mut(&graph) {
            g.count_done(prefix, true);
            if let Some(p) = g.prefixes.get(prefix as usize) {
                let what = What::Task {
                    key: self.tasks[&id].key.clone(),
                    prefix: p.name.clone(),
                    thread,
                    fetch,
                    nbytes,
                    transfer_bytes,
                };
                self.stream.push(worker, what, stop - duration, stop);
            }
            g.count(
                prefix,
                PrefixTotals {
                    tasks: 1,
                    seconds: duration,
                    waited,
                    nbytes,
                    transfer_bytes,
                },
            );
            if wanted && g.session {
                let t = &self.tasks[&id];
                self.outbox.to_clients.push((
                    graph,
                    GraphEvent::Done(OutputInfo {
                        key: t.key.to_string(),
                        nbytes,
                        format,
                    }),
                ));
            } else if wanted {
                g.outputs_ready += 1;
            }
        }
        if refs == 0 {
            self.release_result(id);
        }
        self.check_finished(graph);
        self.schedule();
    }

    /// Removes a task from its worker's processing set; false when the task
    /// is not processing there.
    fn take_from_processing(&mut self, worker: WorkerId, id: TaskId) -> bool {
        let Some(t) = self.tasks.get_mut(&id) else {
            return false;
        };
        if t.state != TaskState::Processing || t.processing_on != Some(worker) {
            return false;
        }
        t.processing_on = None;
        t.steal_pending = false;
        let est = t.estimate;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.processing.remove(&id);
            w.occupancy = (w.occupancy - est).max(0.0);
        }
        true
    }

    /// A worker reports that a task failed, or that inputs it needed could not be fetched.
    pub fn task_erred(
        &mut self,
        worker: WorkerId,
        id: TaskId,
        error: TaskFailure,
        missing: Vec<TaskId>,
    ) {
        let TaskFailure { error, exception } = error;
        if !self.take_from_processing(worker, id) {
            return;
        }
        if !missing.is_empty() {
            // The inputs are gone from where we said they were: forget those
            // copies and compute what is needed again. Not the task's fault.
            // Only the task's own inputs: a confused worker must not make
            // the scheduler forget unrelated results.
            let deps = &self.tasks[&id].deps;
            let missing: Vec<TaskId> = missing.into_iter().filter(|m| deps.contains(m)).collect();
            for m in missing {
                self.forget_copies(m);
            }
            self.set_state(id, TaskState::Released);
            self.need(id);
        } else if self.tasks[&id].retries_left > 0 {
            let t = self.tasks.get_mut(&id).expect("task exists");
            t.retries_left -= 1;
            tracing::info!(task = %t.key, retries_left = t.retries_left, %error, "task failed, retrying");
            self.enqueue(id);
        } else {
            let worker_name = self
                .workers
                .get(&worker)
                .map(|w| w.name.clone())
                .unwrap_or_default();
            self.fail_task(id, worker_name, error, exception);
        }
        self.schedule();
    }

    /// The task errs for good: its graph fails with this task's own error,
    /// or in a session, the task and what depends on it err.
    fn fail_task(&mut self, id: TaskId, worker: String, error: String, exception: bytes::Bytes) {
        let graph = self.tasks[&id].graph;
        if self.graphs.get(&graph).is_some_and(|g| g.session) {
            let failure = Failure {
                key: self.tasks[&id].key.to_string(),
                worker,
                error,
                exception,
            };
            tracing::info!(task = %failure.key, worker = %failure.worker, error = %failure.error, "task erred");
            self.totals.tasks_erred += 1;
            self.spread_failure(id, failure);
            return;
        }
        self.set_state(id, TaskState::Erred);
        self.totals.tasks_erred += 1;
        let t = &self.tasks[&id];
        let key = t.key.to_string();
        let graph = t.graph;
        tracing::warn!(task = %key, %worker, %error, "task erred");
        let lost_outputs = self.downstream_outputs(id);
        self.outbox.to_clients.push((
            graph,
            GraphEvent::Failed {
                key,
                worker,
                error,
                exception,
                lost_outputs,
            },
        ));
        // Nothing downstream can finish: stop the rest of the graph now.
        self.remove_graph(graph);
    }

    /// Keys of the outputs that depend on `id`, itself included.
    fn downstream_outputs(&self, id: TaskId) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![id];
        let mut out = Vec::new();
        while let Some(t) = stack.pop() {
            if !seen.insert(t) {
                continue;
            }
            if let Some(task) = self.tasks.get(&t) {
                if task.wanted {
                    out.push(task.key.to_string());
                }
                stack.extend(task.dependents.iter().copied());
            }
        }
        out.sort();
        out
    }

    /// Forgets every copy of a result (the holders are told to drop it) and
    /// computes it again if it is still needed.
    fn forget_copies(&mut self, id: TaskId) {
        if self.drop_copies(id) {
            self.result_lost(id);
        }
    }

    /// A result has no holder left.
    fn result_lost(&mut self, id: TaskId) {
        self.set_state(id, TaskState::Released);
        let t = &self.tasks[&id];
        let (graph, wanted, refs) = (t.graph, t.wanted, t.refs);
        let dependents = t.dependents.clone();
        if wanted
            && let Some(g) = self.graphs.get_mut(&graph)
            && !g.session
        {
            g.outputs_ready -= 1;
        }
        for d in dependents {
            let dt = self.tasks.get_mut(&d).expect("dependent exists");
            match dt.state {
                TaskState::Waiting => dt.waiting_on += 1,
                TaskState::Queued => {
                    dt.waiting_on = 1;
                    self.set_state(d, TaskState::Waiting);
                }
                _ => {}
            }
        }
        if refs > 0 {
            self.need(id);
        }
    }

    fn check_finished(&mut self, graph: GraphId) {
        let Some(g) = self.graphs.get_mut(&graph) else {
            return;
        };
        if g.session || g.finished || g.outputs_ready < g.outputs.len() {
            return;
        }
        g.finished = true;
        let outputs = g
            .outputs
            .iter()
            .map(|id| {
                let t = &self.tasks[id];
                OutputInfo {
                    key: t.key.to_string(),
                    nbytes: t.nbytes,
                    format: t.format,
                }
            })
            .collect();
        let prefixes = g.prefix_totals();
        self.outbox
            .to_clients
            .push((graph, GraphEvent::Finished { outputs, prefixes }));
    }

    /// Emits progress for graphs that changed since the last call.
    pub fn report_progress(&mut self) {
        for g in self.graphs.values_mut() {
            if !g.dirty {
                continue;
            }
            g.dirty = false;
            self.outbox.to_clients.push((
                g.id,
                GraphEvent::Progress {
                    total: g.keys.len() as u64,
                    done: g.n_done,
                    processing: g.counts[TaskState::Processing as usize],
                    erred: g.counts[TaskState::Erred as usize],
                },
            ));
        }
    }

    fn busy(&self) -> bool {
        [TaskState::Waiting, TaskState::Queued, TaskState::Processing]
            .iter()
            .any(|s| self.count(*s) > 0)
    }

    /// How long no task has been waiting or running (zero while busy).
    pub fn idle_for(&self) -> Duration {
        if self.busy() {
            Duration::ZERO
        } else {
            self.last_busy.elapsed()
        }
    }

    /// Periodic work: removes silent workers, moves retirements on, sends progress.
    pub fn tick(&mut self, now: Instant) {
        if self.busy() {
            self.last_busy = now;
        }
        let ttl = self.config.worker_ttl;
        let silent: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| now.saturating_duration_since(w.last_seen) > ttl)
            .map(|w| w.id)
            .collect();
        for w in silent {
            tracing::warn!(
                worker = w,
                ttl_s = ttl.as_secs_f64(),
                "worker missed its heartbeats"
            );
            self.remove_worker(w, RemoveReason::MissedHeartbeats);
        }
        self.advance_retirements();
        self.report_progress();
        self.schedule();
    }
}
