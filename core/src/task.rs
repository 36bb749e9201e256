//! What the scheduler hands a worker to run, and how results are laid out:
//! the same types on both sides of the wire, decoded from it only in
//! `daskrs-proto`.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// How a result's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataFormat {
    /// An Arrow IPC stream.
    Arrow,
    /// Bytes the runtime does not interpret.
    Opaque,
    /// One Arrow IPC stream per piece of a shuffle, behind an index; readers
    /// take one piece each.
    Pieces,
    /// A Python object: pickle protocol 5 with its out-of-band buffers, in
    /// the frame layout of the `daskrs` package's `_serialize` module.
    Pickle,
}

impl DataFormat {
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Arrow => "arrow",
            DataFormat::Opaque => "opaque",
            DataFormat::Pieces => "pieces",
            DataFormat::Pickle => "pickle",
        }
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The order in which ready tasks run, on the scheduler and on a worker
/// alike: lower runs first, compared field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority {
    /// The user's priority, negated: a higher user priority runs first.
    pub user: i64,
    /// The graph's submission order: older graphs first.
    pub graph: u64,
    /// The task's position in its graph's depth-first order.
    pub order: u32,
}

impl Priority {
    /// The priority of a task with the user's `priority` at `order` in graph `graph`.
    pub fn new(user_priority: i32, graph: u64, order: u32) -> Priority {
        Priority {
            user: -i64::from(user_priority),
            graph,
            order,
        }
    }
}

/// One input of an assigned task: a dependency's result, or one piece of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Input {
    pub task: u64,
    /// The piece of a result in pieces to take; `None` takes all of it.
    pub piece: Option<u32>,
}

/// Where a dependency the worker lacks can be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub task: u64,
    /// Peer addresses of the workers that hold it.
    pub addresses: Vec<String>,
    pub nbytes: u64,
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub task: u64,
    pub key: Arc<str>,
    pub kind: Arc<str>,
    pub payload: Bytes,
    /// Inputs in the order the task kind sees them; a result may repeat.
    pub inputs: Vec<Input>,
    /// Where each distinct input the worker lacks is held.
    pub locations: Vec<Location>,
    pub priority: Priority,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_higher_user_priority_runs_before_an_older_graph() {
        let urgent_late = Priority::new(10, 7, 3);
        let plain_early = Priority::new(0, 1, 0);
        assert!(urgent_late < plain_early);
        assert!(Priority::new(0, 1, 5) < Priority::new(0, 2, 0));
        assert!(Priority::new(0, 1, 4) < Priority::new(0, 1, 5));
        assert!(Priority::new(-1, 1, 0) > Priority::new(0, 9, 9));
    }
}
