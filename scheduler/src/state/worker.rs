//! A worker as the scheduler tracks it, and membership: workers joining,
//! reporting, and leaving (retired or lost).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::Instant;

use daskrs_core::TaskState;

use super::task::{TaskId, WorkerId};
use super::{MAX_SUSPICIOUS, State, What};

/// Seconds of memory history kept per worker, for the dashboard.
pub const MEMORY_HISTORY_SECONDS: f64 = 300.0;
/// Heartbeats closer together than this add no sample (a worker sends one
/// at once when it pauses or resumes).
const MEMORY_SAMPLE_GAP: f64 = 0.25;

/// A worker's memory at one heartbeat, for its history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemorySample {
    /// On the scheduler's clock ([`daskrs_core::clock`]).
    pub at: f64,
    /// Its results in memory.
    pub managed: u64,
    /// Its results on disk.
    pub spilled: u64,
    /// Its process's resident memory and its task processes'.
    pub process: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    Running,
    /// Over its memory pause threshold: takes no new tasks.
    Paused,
    /// Takes no new tasks, hands off its results, then closes.
    Retiring,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Running => "running",
            WorkerStatus::Paused => "paused",
            WorkerStatus::Retiring => "retiring",
        }
    }
}

#[derive(Debug)]
pub struct WorkerState {
    pub id: WorkerId,
    pub name: String,
    pub address: String,
    pub nthreads: u32,
    pub memory_limit: u64,
    pub kinds: Vec<String>,
    /// Its Python executors' versions (JSON), empty when it runs no Python.
    pub python: String,
    pub status: WorkerStatus,
    /// Tasks sent to this worker and not yet finished.
    pub processing: HashSet<TaskId>,
    /// Sum of the processing tasks' expected run times, in seconds.
    pub occupancy: f64,
    pub has_what: HashSet<TaskId>,
    /// Bytes of the results in `has_what`.
    pub nbytes: u64,
    pub last_seen: Instant,
    /// Figures the worker reports in heartbeats.
    pub memory_bytes: u64,
    pub spilled_bytes: u64,
    pub executed: u64,
    /// Above this much memory it pauses (0 until it says).
    pub pause_bytes: u64,
    /// Its memory at its heartbeats over the last
    /// [`MEMORY_HISTORY_SECONDS`], oldest first.
    pub memory_history: VecDeque<MemorySample>,
    /// Seconds from its clock to the scheduler's (see [`State::clock_offset`]).
    pub clock_offset: f64,
}

/// Why a worker leaves the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveReason {
    /// It handed off its results and was closed: not a loss.
    Retired,
    /// It sent nothing for longer than the worker TTL.
    MissedHeartbeats,
    /// Its stream ended or failed, with what the transport said.
    Disconnected(String),
}

impl RemoveReason {
    pub fn is_loss(&self) -> bool {
        !matches!(self, RemoveReason::Retired)
    }
}

impl fmt::Display for RemoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoveReason::Retired => f.write_str("retired"),
            RemoveReason::MissedHeartbeats => f.write_str("missed heartbeats"),
            RemoveReason::Disconnected(why) => write!(f, "disconnected: {why}"),
        }
    }
}

/// What a worker reports about itself in a heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerReport {
    /// Bytes of results it keeps in memory, and what its task processes hold.
    pub memory_bytes: u64,
    /// Bytes of results it keeps in memory alone.
    pub managed_bytes: u64,
    /// Its process's resident memory and its task processes'.
    pub process_bytes: u64,
    /// Its pause threshold.
    pub pause_bytes: u64,
    /// When it was received, on the scheduler's clock.
    pub at: f64,
    /// Bytes of results it spilled to disk.
    pub spilled_bytes: u64,
    /// Over its memory pause threshold.
    pub paused: bool,
    /// Tasks it ran since it started.
    pub executed: u64,
}

impl WorkerState {
    pub fn accepts_tasks(&self) -> bool {
        self.status == WorkerStatus::Running
    }
}

/// What a worker says about itself when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub address: String,
    pub nthreads: u32,
    pub memory_limit: u64,
    pub kinds: Vec<String>,
    pub python: String,
}

impl State {
    pub fn add_worker(&mut self, reg: Registration, now: Instant) -> WorkerId {
        let id = self.next_worker;
        self.next_worker += 1;
        let name = if reg.name.is_empty() {
            reg.address.clone()
        } else {
            reg.name
        };
        tracing::info!(worker = id, %name, address = %reg.address, nthreads = reg.nthreads, "worker joined");
        self.workers.insert(
            id,
            WorkerState {
                id,
                name,
                address: reg.address,
                nthreads: reg.nthreads.max(1),
                memory_limit: reg.memory_limit,
                kinds: reg.kinds,
                python: reg.python,
                status: WorkerStatus::Running,
                processing: HashSet::new(),
                occupancy: 0.0,
                has_what: HashSet::new(),
                nbytes: 0,
                last_seen: now,
                memory_bytes: 0,
                spilled_bytes: 0,
                executed: 0,
                pause_bytes: 0,
                memory_history: VecDeque::new(),
                clock_offset: f64::INFINITY,
            },
        );
        self.requeue_no_worker();
        self.schedule();
        id
    }

    pub fn seen(&mut self, worker: WorkerId, now: Instant) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = now;
        }
    }

    pub fn heartbeat(&mut self, worker: WorkerId, report: WorkerReport) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let WorkerReport {
            memory_bytes: memory,
            managed_bytes,
            process_bytes,
            pause_bytes,
            at,
            spilled_bytes,
            paused,
            executed,
        } = report;
        w.memory_bytes = memory;
        w.spilled_bytes = spilled_bytes;
        w.executed = executed;
        w.pause_bytes = pause_bytes;
        let history = &mut w.memory_history;
        if history
            .back()
            .is_none_or(|last| at - last.at >= MEMORY_SAMPLE_GAP)
        {
            history.push_back(MemorySample {
                at,
                managed: managed_bytes,
                spilled: spilled_bytes,
                process: process_bytes,
            });
        }
        while history
            .front()
            .is_some_and(|first| at - first.at > MEMORY_HISTORY_SECONDS)
        {
            history.pop_front();
        }
        let was = w.status;
        w.status = match (w.status, paused) {
            (WorkerStatus::Retiring, _) => WorkerStatus::Retiring,
            (_, true) => WorkerStatus::Paused,
            (_, false) => WorkerStatus::Running,
        };
        if was != w.status {
            tracing::info!(worker = %w.name, status = w.status.as_str(), memory, "worker status changed");
            if w.status == WorkerStatus::Running {
                self.schedule();
            }
        }
    }

    /// What to add to a time on `worker`'s clock to place it on the
    /// scheduler's, given `seen`, the arrival time of one of its batches less
    /// the time it was sent. The smallest seen so far: the batch that waited
    /// least on the way, in the worker's queue and in flight, sets it; times
    /// placed by it are never later than their arrival.
    pub fn clock_offset(&mut self, worker: WorkerId, seen: f64) -> f64 {
        match self.workers.get_mut(&worker) {
            Some(w) => {
                w.clock_offset = w.clock_offset.min(seen);
                w.clock_offset
            }
            None => seen,
        }
    }

    /// A worker wrote results to disk from `start` to `stop` (scheduler's
    /// clock): a mark in the task stream.
    pub fn spilled(&mut self, worker: WorkerId, start: f64, stop: f64, bytes: u64) {
        if self.workers.contains_key(&worker) {
            self.stream.push(worker, What::Spill { bytes }, start, stop);
        }
    }

    /// Forgets a worker: its running tasks go back to the queue and results
    /// only it held are computed again where still needed.
    pub fn remove_worker(&mut self, worker: WorkerId, reason: RemoveReason) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        if reason.is_loss() {
            tracing::warn!(worker = %w.name, address = %w.address, %reason, processing = w.processing.len(), results = w.has_what.len(), "worker lost");
            self.totals.workers_lost += 1;
        } else {
            tracing::info!(worker = %w.name, address = %w.address, "worker retired");
        }
        self.outbox.closed_workers.push(worker);
        // Results first, so that re-queued tasks see which inputs are gone.
        let mut lost = Vec::new();
        for id in w.has_what {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            t.who_has.retain(|&h| h != worker);
            if t.who_has.is_empty() && t.state == TaskState::Memory {
                lost.push(id);
            }
        }
        // Lost results are handled in priority order so recomputation follows the graph's order.
        lost.sort_by_key(|id| self.tasks[id].priority);
        for id in lost {
            self.result_lost(id);
        }
        for id in w.processing {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            if t.state != TaskState::Processing || t.processing_on != Some(worker) {
                continue;
            }
            t.processing_on = None;
            t.steal_pending = false;
            t.suspicious += 1;
            if t.suspicious >= MAX_SUSPICIOUS {
                let error = format!(
                    "{} workers died while running this task (last: {}, {reason}); it may be what kills them",
                    t.suspicious, w.name
                );
                self.fail_task(id, w.name.clone(), error, bytes::Bytes::new());
                continue;
            }
            self.set_state(id, TaskState::Released);
            self.need(id);
        }
        self.schedule();
    }
}
