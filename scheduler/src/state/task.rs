//! A task as the scheduler tracks it.

use std::sync::Arc;

use bytes::Bytes;
use daskrs_core::{DataFormat, Input, Priority, TaskState};

pub type TaskId = u64;
pub type WorkerId = u64;
pub type GraphId = u64;

#[derive(Debug)]
pub struct Task {
    pub key: Arc<str>,
    pub graph: GraphId,
    /// Its key's prefix, by index in the graph's prefixes.
    pub prefix: u32,
    pub kind: Arc<str>,
    pub payload: Bytes,
    /// Inputs in order, with repeats, as the task kind sees them.
    pub inputs: Vec<Input>,
    /// Distinct dependencies.
    pub deps: Vec<TaskId>,
    pub dependents: Vec<TaskId>,
    pub state: TaskState,
    /// While waiting: dependencies not yet in memory.
    pub waiting_on: u32,
    /// Dependents that have not finished, plus one when a client wants the
    /// result. At zero the result is dropped from every worker.
    pub refs: u32,
    pub wanted: bool,
    /// The result was computed; cleared when a lost result has to be
    /// computed again.
    pub done: bool,
    /// The task counts in its dependencies' `refs`: set while it waits,
    /// queues or runs, cleared once it finished, erred or was let go of.
    pub holds_deps: bool,
    /// In a session, why the task erred, kept while the client holds the
    /// key so that later submissions that depend on it err the same way.
    pub failure: Option<Box<Failure>>,
    pub who_has: Vec<WorkerId>,
    pub nbytes: u64,
    /// How the result is laid out; meaningful once it is done.
    pub format: DataFormat,
    pub processing_on: Option<WorkerId>,
    /// Expected run time in seconds, counted in the worker's occupancy.
    pub estimate: f64,
    pub retries_left: u32,
    /// Times a worker died while running this task.
    pub suspicious: u32,
    pub priority: Priority,
    pub steal_pending: bool,
    /// A hand-off copy is being made on this worker.
    pub replica_pending: Option<WorkerId>,
}

/// A task's failure as the client sees it: the task that failed first (this
/// one or a dependency), the worker it ran on, its error and what user code
/// raised, serialized.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub key: String,
    pub worker: String,
    pub error: String,
    pub exception: Bytes,
}

impl Task {
    pub fn in_memory(&self) -> bool {
        self.state == TaskState::Memory
    }
}
