//! Graphs: submission (validation, pruning, reference counts) and release.

use std::collections::HashMap;
use std::sync::Arc;

use daskrs_core::{DataFormat, GraphError, Input, Priority, TaskSpec, TaskState, kinds};

use super::task::{GraphId, Task, TaskId};
use super::{State, ToWorker};

#[derive(Debug)]
pub struct Graph {
    pub id: GraphId,
    pub name: String,
    /// Every task of the graph that is needed for its outputs.
    pub tasks: Vec<TaskId>,
    pub keys: HashMap<Arc<str>, TaskId>,
    pub outputs: Vec<TaskId>,
    /// Tasks whose results were computed (and not lost since).
    pub n_done: u64,
    /// Outputs currently in memory.
    pub outputs_ready: usize,
    pub counts: [u64; TaskState::ALL.len()],
    pub finished: bool,
    /// Progress changed since it was last reported.
    pub dirty: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputInfo {
    pub key: String,
    pub nbytes: u64,
    pub format: DataFormat,
}

/// What a client asks to run.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub name: String,
    pub tasks: Vec<TaskSpec>,
    pub outputs: Vec<String>,
}

impl State {
    /// Whether some worker, or the built-in registry, knows this kind, or
    /// it is one that workers joining later may run.
    pub fn kind_known(&self, kind: &str) -> bool {
        kinds::is_builtin(kind)
            || kinds::OPTIONAL.contains(&kind)
            || self
                .workers
                .values()
                .any(|w| w.kinds.iter().any(|k| k == kind))
    }

    fn known_kinds(&self) -> String {
        let mut all: Vec<&str> = kinds::BUILTIN.iter().map(|(n, _, _)| *n).collect();
        all.extend(kinds::OPTIONAL);
        for w in self.workers.values() {
            all.extend(w.kinds.iter().map(String::as_str));
        }
        all.sort_unstable();
        all.dedup();
        all.join(", ")
    }

    /// Validates a graph and queues its tasks; nothing is scheduled when it
    /// is invalid. Tasks that no output depends on are not run.
    pub fn submit(&mut self, sub: Submission) -> Result<(GraphId, usize), GraphError> {
        for t in &sub.tasks {
            kinds::check(&t.kind, &t.payload, t.deps.len()).map_err(|message| {
                GraphError::InvalidArguments {
                    key: t.key.clone(),
                    message,
                }
            })?;
        }
        let valid = daskrs_core::validate(
            sub.tasks,
            &sub.outputs,
            |k| self.kind_known(k),
            || self.known_kinds(),
        )?;
        let graph_id = self.next_graph;
        self.next_graph += 1;

        // Keep only what the outputs need.
        let n = valid.tasks.len();
        let mut keep = vec![false; n];
        let mut stack: Vec<u32> = valid.outputs.clone();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut keep[i as usize], true) {
                stack.extend(valid.deps[i as usize].iter().copied());
            }
        }
        let mut ids = vec![0 as TaskId; n];
        for i in 0..n {
            if keep[i] {
                ids[i] = self.next_task;
                self.next_task += 1;
            }
        }
        let mut wanted = vec![false; n];
        for &o in &valid.outputs {
            wanted[o as usize] = true;
        }

        let mut graph = Graph {
            id: graph_id,
            name: sub.name,
            tasks: Vec::new(),
            keys: HashMap::new(),
            outputs: valid.outputs.iter().map(|&o| ids[o as usize]).collect(),
            n_done: 0,
            outputs_ready: 0,
            counts: [0; TaskState::ALL.len()],
            finished: false,
            dirty: true,
        };
        let ValidGraph {
            tasks,
            inputs,
            deps,
            dependents,
            order,
            ..
        } = valid;
        let mut fresh = Vec::new();
        for (i, spec) in tasks.into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let id = ids[i];
            let key: Arc<str> = Arc::from(spec.key);
            let kind: Arc<str> = self
                .estimates
                .get_key_value(spec.kind.as_str())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(spec.kind));
            let my_dependents: Vec<TaskId> = dependents[i]
                .iter()
                .filter(|&&d| keep[d as usize])
                .map(|&d| ids[d as usize])
                .collect();
            let refs = my_dependents.len() as u32 + u32::from(wanted[i]);
            let task = Task {
                key: key.clone(),
                graph: graph_id,
                kind,
                payload: spec.payload,
                inputs: inputs[i]
                    .iter()
                    .enumerate()
                    .map(|(n, &d)| Input {
                        task: ids[d as usize],
                        piece: spec.parts.get(n).copied().flatten(),
                    })
                    .collect(),
                deps: deps[i].iter().map(|&d| ids[d as usize]).collect(),
                dependents: my_dependents,
                state: TaskState::Released,
                waiting_on: deps[i].len() as u32,
                refs,
                wanted: wanted[i],
                done: false,
                who_has: Vec::new(),
                nbytes: 0,
                format: DataFormat::Opaque,
                processing_on: None,
                estimate: 0.0,
                retries_left: spec.retries,
                suspicious: 0,
                priority: Priority::new(spec.priority, graph_id, order[i]),
                steal_pending: false,
                replica_pending: None,
            };
            graph.keys.insert(key, id);
            graph.tasks.push(id);
            graph.counts[TaskState::Released as usize] += 1;
            self.counts[TaskState::Released as usize] += 1;
            if task.waiting_on == 0 {
                fresh.push(id);
            }
            self.tasks.insert(id, task);
        }
        let count = graph.tasks.len();
        let waiting: Vec<TaskId> = graph
            .tasks
            .iter()
            .copied()
            .filter(|id| self.tasks[id].waiting_on > 0)
            .collect();
        self.graphs.insert(graph_id, graph);
        for id in waiting {
            self.set_state(id, TaskState::Waiting);
        }
        for id in fresh {
            self.enqueue(id);
        }
        tracing::info!(graph = graph_id, tasks = count, "graph accepted");
        self.schedule();
        Ok((graph_id, count))
    }

    /// Forgets a graph: its running tasks are cancelled and its results
    /// dropped from the workers. Safe to call twice.
    pub fn remove_graph(&mut self, graph_id: GraphId) -> bool {
        let Some(graph) = self.graphs.remove(&graph_id) else {
            return false;
        };
        for id in graph.tasks {
            let Some(t) = self.tasks.remove(&id) else {
                continue;
            };
            self.counts[t.state as usize] -= 1;
            if let Some(w) = t.processing_on
                && let Some(ws) = self.workers.get_mut(&w)
            {
                ws.processing.remove(&id);
                ws.occupancy = (ws.occupancy - t.estimate).max(0.0);
                self.outbox.to_workers.push((w, ToWorker::Free(id)));
            }
            for w in t.who_has {
                if let Some(ws) = self.workers.get_mut(&w) {
                    ws.has_what.remove(&id);
                    ws.nbytes -= t.nbytes;
                }
                self.outbox.to_workers.push((w, ToWorker::Free(id)));
            }
        }
        tracing::info!(graph = graph_id, "graph released");
        // Freed slots may take other graphs' work.
        self.schedule();
        true
    }

    /// Where a graph's result can be fetched: holders' addresses, size, format.
    pub fn locate(
        &self,
        graph_id: GraphId,
        key: &str,
    ) -> Result<(TaskId, Vec<String>), LocateError> {
        let g = self
            .graphs
            .get(&graph_id)
            .ok_or(LocateError::NoGraph(graph_id))?;
        let &id = g
            .keys
            .get(key)
            .ok_or_else(|| LocateError::NoKey(key.to_string()))?;
        let t = &self.tasks[&id];
        if !t.wanted {
            return Err(LocateError::NotOutput(key.to_string()));
        }
        if t.state != TaskState::Memory {
            return Err(LocateError::NotReady(key.to_string(), t.state));
        }
        let addrs = t
            .who_has
            .iter()
            .filter_map(|w| self.workers.get(w).map(|w| w.address.clone()))
            .collect();
        Ok((id, addrs))
    }
}

use daskrs_core::ValidGraph;

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("graph {0} is not known (finished and released, cancelled, or never submitted)")]
    NoGraph(GraphId),
    #[error("key {0:?} is not part of the graph")]
    NoKey(String),
    #[error("key {0:?} is not an output of the graph")]
    NotOutput(String),
    #[error("result of {0:?} is not in memory (task is {1})")]
    NotReady(String, TaskState),
}
