//! A worker as the scheduler tracks it.

use std::collections::HashSet;
use std::time::Instant;

use super::task::{TaskId, WorkerId};

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
}

impl WorkerState {
    pub fn accepts_tasks(&self) -> bool {
        self.status == WorkerStatus::Running
    }
}
