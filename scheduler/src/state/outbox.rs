//! What the state machine wants sent: messages to workers and events for the
//! clients of graphs, collected during a transition and sent by the services
//! after it, in batches.

use daskrs_core::Assignment;

use super::graph::{OutputInfo, PrefixTotals};
use super::task::{Failure, GraphId, TaskId, WorkerId};

/// A message the state machine wants sent to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    Compute(Assignment),
    Free(TaskId),
    Steal(TaskId),
    FetchReplica {
        task: TaskId,
        addresses: Vec<String>,
    },
    Close {
        reason: String,
    },
}

/// A message the state machine wants sent to the client running a graph.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphEvent {
    Progress {
        total: u64,
        done: u64,
        processing: u64,
        erred: u64,
    },
    Finished {
        outputs: Vec<OutputInfo>,
        /// The graph's tasks summed by prefix, most time first.
        prefixes: Vec<(String, PrefixTotals)>,
    },
    Failed {
        key: String,
        worker: String,
        error: String,
        /// What user code raised, serialized; empty for other errors.
        exception: bytes::Bytes,
        lost_outputs: Vec<String>,
    },
    /// In a session: a key the client wants is computed.
    Done(OutputInfo),
    /// In a session: a key the client wants erred, itself or because a
    /// task it depends on did (`failure.key`).
    Erred { key: String, failure: Box<Failure> },
}

#[derive(Debug, Default)]
pub struct Outbox {
    pub to_workers: Vec<(WorkerId, ToWorker)>,
    pub to_clients: Vec<(GraphId, GraphEvent)>,
    /// Workers removed by the state machine, whose streams should close.
    pub closed_workers: Vec<WorkerId>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.to_workers.is_empty() && self.to_clients.is_empty() && self.closed_workers.is_empty()
    }
}
