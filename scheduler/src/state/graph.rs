//! Graphs: submission (validation, pruning, reference counts) and release.
//!
//! A graph is either one submission that finishes or fails as a whole (the
//! CLI's graphs, SQL), or a session: the graph a client's futures live in,
//! which grows with each submission and whose tasks finish and err one by
//! one (see `session.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use daskrs_core::{
    DataFormat, GraphError, Input, Priority, TaskSpec, TaskState, ValidGraph, kinds,
};

use super::task::{GraphId, Task, TaskId};
use super::{State, ToWorker};

#[derive(Debug)]
pub struct Graph {
    pub id: GraphId,
    pub name: String,
    /// Every task of the graph that is needed, by key.
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
    /// A client's session: tasks err one by one and live until released.
    pub session: bool,
    /// The graph's task prefixes ([`daskrs_core::key_prefix`]), each with
    /// the totals of its tasks that finished; a task knows its own by index.
    pub prefixes: Vec<Prefix>,
    prefix_ids: HashMap<Box<str>, u32>,
    /// The SQL queries among its tasks, newest last (at most
    /// [`MAX_QUERIES`]), for the dashboard.
    pub queries: Vec<QueryInfo>,
}

/// The most queries a graph remembers; a session's older ones are forgotten.
const MAX_QUERIES: usize = 32;
/// The longest plan kept of a query; the rest is cut.
const MOST_EXPLAIN_BYTES: usize = 64 << 10;

/// A planned SQL query whose tasks are in a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryInfo {
    /// What its task keys start with before `s<stage>.<task>`: nothing
    /// when the graph is the query, `<answer>/` in a session.
    pub keys: String,
    /// Its `--explain` plan.
    pub explain: String,
}

impl QueryInfo {
    /// Its stages as the plan describes them: number, tasks, and the rest
    /// of the plan's line (what the stage reads, how its output is cut).
    pub fn stages(&self) -> Vec<(u32, u64, String)> {
        self.explain
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("Stage ")?;
                let (number, rest) = rest.split_once(": ")?;
                let (tasks, _) = rest.split_once(' ')?;
                Some((number.parse().ok()?, tasks.parse().ok()?, rest.to_string()))
            })
            .collect()
    }

    /// The key of stage `stage`'s first task.
    fn stage_key(&self, stage: u32) -> String {
        format!("{}s{stage}.0", self.keys)
    }

    /// The task prefix of stage `stage` ([`daskrs_core::key_prefix`]).
    pub fn stage_prefix(&self, stage: u32) -> String {
        daskrs_core::key_prefix(&self.stage_key(stage)).to_string()
    }
}

/// Past this many prefixes in one graph (keys that share no prefix, such
/// as a session's `result_1`, `result_2`, ...), new ones are counted
/// together under the name `other`.
const MAX_PREFIXES: usize = 10_000;

#[derive(Debug)]
pub struct Prefix {
    pub name: Arc<str>,
    pub totals: PrefixTotals,
    /// Its tasks in the graph by state, and how many of them are done
    /// (computed, and not lost since), for progress by prefix.
    pub counts: [u64; TaskState::ALL.len()],
    pub done: u64,
}

impl Prefix {
    /// A prefix no task has.
    pub fn empty() -> Prefix {
        Prefix {
            name: "".into(),
            totals: PrefixTotals::default(),
            counts: [0; TaskState::ALL.len()],
            done: 0,
        }
    }

    /// Its tasks in the graph.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Tasks of one prefix ([`daskrs_core::key_prefix`]) that finished.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefixTotals {
    pub tasks: u64,
    /// Seconds they ran, fetching excluded.
    pub seconds: f64,
    /// Seconds they waited on their workers: fetching, then a thread.
    pub waited: f64,
    pub nbytes: u64,
    pub transfer_bytes: u64,
}

impl Graph {
    /// The index of the prefix of key `key`, added if new.
    pub(super) fn prefix_of(&mut self, key: &str) -> u32 {
        let mut name = daskrs_core::key_prefix(key);
        // Tasks come in runs of one prefix: no lookup for the same as the last.
        if let Some(last) = self.prefixes.last()
            && *last.name == *name
        {
            return self.prefixes.len() as u32 - 1;
        }
        if self.prefixes.len() >= MAX_PREFIXES && !self.prefix_ids.contains_key(name) {
            name = "other";
        }
        if let Some(&i) = self.prefix_ids.get(name) {
            return i;
        }
        let i = self.prefixes.len() as u32;
        self.prefixes.push(Prefix {
            name: name.into(),
            ..Prefix::empty()
        });
        self.prefix_ids.insert(name.into(), i);
        i
    }

    /// Adds what a finished task of prefix `prefix` reports to its totals.
    pub(super) fn count(&mut self, prefix: u32, more: PrefixTotals) {
        let Some(p) = self.prefixes.get_mut(prefix as usize) else {
            return;
        };
        let totals = &mut p.totals;
        totals.tasks += more.tasks;
        totals.seconds += more.seconds;
        totals.waited += more.waited;
        totals.nbytes += more.nbytes;
        totals.transfer_bytes += more.transfer_bytes;
    }

    /// Counts a task of prefix `prefix` that moved from state `from` to
    /// `to` (`None`: it came, or went), in the graph and in its prefix.
    pub(super) fn recount(&mut self, prefix: u32, from: Option<TaskState>, to: Option<TaskState>) {
        let p = self.prefixes.get_mut(prefix as usize);
        let counts = [Some(&mut self.counts), p.map(|p| &mut p.counts)];
        for c in counts.into_iter().flatten() {
            if let Some(from) = from {
                c[from as usize] -= 1;
            }
            if let Some(to) = to {
                c[to as usize] += 1;
            }
        }
    }

    /// Counts a task of prefix `prefix` as done, or as no longer done (a
    /// lost result, a forgotten task), in the graph and in its prefix.
    pub(super) fn count_done(&mut self, prefix: u32, done: bool) {
        let p = self.prefixes.get_mut(prefix as usize);
        for n in [Some(&mut self.n_done), p.map(|p| &mut p.done)]
            .into_iter()
            .flatten()
        {
            if done {
                *n += 1;
            } else {
                *n -= 1;
            }
        }
    }

    /// The prefix named `name`, if the graph has it.
    pub fn prefix_named(&self, name: &str) -> Option<&Prefix> {
        self.prefix_ids
            .get(name)
            .and_then(|&i| self.prefixes.get(i as usize))
    }

    /// The mean run time of the prefix's tasks that finished, if any did.
    pub(super) fn mean_seconds(&self, prefix: u32) -> Option<f64> {
        self.prefixes
            .get(prefix as usize)
            .filter(|p| p.totals.tasks > 0)
            .map(|p| p.totals.seconds / p.totals.tasks as f64)
    }

    /// The totals by prefix, most time first.
    pub(super) fn prefix_totals(&self) -> Vec<(String, PrefixTotals)> {
        let mut all: Vec<(String, PrefixTotals)> = self
            .prefixes
            .iter()
            .filter(|p| p.totals.tasks > 0)
            .map(|p| (p.name.to_string(), p.totals))
            .collect();
        all.sort_by(|a, b| {
            b.1.seconds
                .total_cmp(&a.1.seconds)
                .then_with(|| a.0.cmp(&b.0))
        });
        all
    }
}

impl Graph {
    pub(super) fn new(id: GraphId, name: String, session: bool) -> Graph {
        Graph {
            id,
            name,
            keys: HashMap::new(),
            outputs: Vec::new(),
            n_done: 0,
            outputs_ready: 0,
            counts: [0; TaskState::ALL.len()],
            finished: false,
            dirty: true,
            session,
            prefixes: Vec::new(),
            prefix_ids: HashMap::new(),
            queries: Vec::new(),
        }
    }
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

/// A validated submission: the tasks to add, and for each task of the
/// validated graph that stands for a task the graph already has, its id.
pub(super) struct Checked {
    pub valid: ValidGraph,
    pub existing: Vec<Option<TaskId>>,
}

impl State {
    /// Notes that a SQL query planned as `explain` is among graph `graph`'s
    /// tasks, keyed `<keys>s<stage>.<task>`. In a session its answer is the
    /// key `output` instead, which is counted in the last stage.
    pub fn describe_query(
        &mut self,
        graph: GraphId,
        keys: &str,
        explain: String,
        output: Option<&str>,
    ) {
        let Some(g) = self.graphs.get_mut(&graph) else {
            return;
        };
        let mut explain = explain;
        if explain.len() > MOST_EXPLAIN_BYTES {
            let mut cut = MOST_EXPLAIN_BYTES;
            while !explain.is_char_boundary(cut) {
                cut -= 1;
            }
            explain.truncate(cut);
            explain.push_str("\n(cut)\n");
        }
        let query = QueryInfo {
            keys: keys.to_string(),
            explain,
        };
        let last = query.stages().last().map(|s| s.0);
        if let (Some(output), Some(last)) = (output, last)
            && let Some(t) = g.keys.get(output).and_then(|id| self.tasks.get_mut(id))
        {
            let to = g.prefix_of(&query.stage_key(last));
            let from = std::mem::replace(&mut t.prefix, to);
            g.recount(from, Some(t.state), None);
            g.recount(to, None, Some(t.state));
            if t.done {
                g.count_done(from, false);
                g.count_done(to, true);
            }
        }
        if g.queries.len() == MAX_QUERIES {
            g.queries.remove(0);
        }
        g.queries.push(query);
    }

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

    /// Validates tasks and outputs. `existing` are tasks of the graph they
    /// join, by key: the new tasks may depend on them and the outputs name
    /// them; they stand in the validated graph as tasks without inputs.
    pub(super) fn check(
        &self,
        mut tasks: Vec<TaskSpec>,
        outputs: &[String],
        existing: &HashMap<Arc<str>, TaskId>,
    ) -> Result<Checked, GraphError> {
        // Before any task is looked at: a graph past the limit costs nothing.
        let held = self.tasks.len();
        if held + tasks.len() > self.config.max_tasks {
            return Err(GraphError::TooManyTasks {
                held,
                adding: tasks.len(),
                limit: self.config.max_tasks,
            });
        }
        for t in &tasks {
            kinds::check(&t.kind, &t.payload, t.deps.len()).map_err(|message| {
                GraphError::InvalidArguments {
                    key: t.key.clone(),
                    message,
                }
            })?;
        }
        let mut refs: Vec<TaskId> = Vec::new();
        if !existing.is_empty() {
            let own: std::collections::HashSet<&str> =
                tasks.iter().map(|t| t.key.as_str()).collect();
            let mut named = std::collections::HashSet::new();
            let referenced = tasks
                .iter()
                .flat_map(|t| t.deps.iter())
                .chain(outputs)
                .filter(|k| !own.contains(k.as_str()));
            for k in referenced {
                if let Some((key, &id)) = existing.get_key_value(k.as_str())
                    && named.insert(key.clone())
                {
                    refs.push(id);
                }
            }
            drop(own);
            for id in &refs {
                let t = &self.tasks[id];
                tasks.push(TaskSpec::new(t.key.to_string(), t.kind.to_string()));
            }
        }
        let n_new = tasks.len() - refs.len();
        let valid = daskrs_core::validate(
            tasks,
            outputs,
            |k| self.kind_known(k),
            || self.known_kinds(),
        )?;
        let mut existing = vec![None; n_new];
        existing.extend(refs.into_iter().map(Some));
        Ok(Checked { valid, existing })
    }

    /// Validates a graph and queues its tasks; nothing is scheduled when it
    /// is invalid. Tasks that no output depends on are not run.
    pub fn submit(&mut self, sub: Submission) -> Result<(GraphId, usize), GraphError> {
        let checked = self.check(sub.tasks, &sub.outputs, &HashMap::new())?;
        let graph_id = self.next_graph;
        self.next_graph += 1;
        self.graphs
            .insert(graph_id, Graph::new(graph_id, sub.name, false));
        let added = self.add_tasks(graph_id, graph_id, checked);
        let g = self.graphs.get_mut(&graph_id).expect("just inserted");
        g.outputs = added.outputs;
        tracing::info!(graph = graph_id, tasks = added.count, "graph accepted");
        self.schedule();
        Ok((graph_id, added.count))
    }

    /// Adds the tasks of a checked submission to a graph and queues those
    /// that can run. `order` orders this submission among others.
    pub(super) fn add_tasks(&mut self, graph_id: GraphId, order: u64, checked: Checked) -> Added {
        let Checked { valid, existing } = checked;
        let n = valid.tasks.len();
        // Keep only what the outputs need.
        let mut keep = vec![false; n];
        let mut stack: Vec<u32> = valid.outputs.clone();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut keep[i as usize], true) {
                stack.extend(valid.deps[i as usize].iter().copied());
            }
        }
        let mut ids = vec![0 as TaskId; n];
        for i in 0..n {
            if let Some(id) = existing[i] {
                ids[i] = id;
            } else if keep[i] {
                ids[i] = self.next_task;
                self.next_task += 1;
            }
        }
        let mut wanted = vec![false; n];
        for &o in &valid.outputs {
            wanted[o as usize] = true;
        }
        let ValidGraph {
            tasks,
            inputs,
            deps,
            dependents,
            order: ranks,
            outputs,
        } = valid;
        let mut fresh = Vec::new();
        let mut waiting = Vec::new();
        let mut count = 0;
        for (i, spec) in tasks.into_iter().enumerate() {
            if !keep[i] || existing[i].is_some() {
                continue;
            }
            let id = ids[i];
            let key: Arc<str> = Arc::from(spec.key);
            let kind: Arc<str> = match self.kinds.get(spec.kind.as_str()) {
                Some(k) => k.clone(),
                None => {
                    let k: Arc<str> = Arc::from(spec.kind);
                    self.kinds.insert(k.clone());
                    k
                }
            };
            let prefix = self.graphs.get_mut(&graph_id).map_or(0, |g| {
                g.keys.insert(key.clone(), id);
                let prefix = g.prefix_of(&key);
                g.recount(prefix, None, Some(TaskState::Released));
                prefix
            });
            let my_dependents: Vec<TaskId> = dependents[i]
                .iter()
                .filter(|&&d| keep[d as usize])
                .map(|&d| ids[d as usize])
                .collect();
            let refs = my_dependents.len() as u32 + u32::from(wanted[i]);
            let my_deps: Vec<TaskId> = deps[i].iter().map(|&d| ids[d as usize]).collect();
            let mut waiting_on = 0;
            for &d in &deps[i] {
                match existing[d as usize] {
                    // An earlier task of the graph: this one needs it too.
                    Some(e) => {
                        let et = self.tasks.get_mut(&e).expect("existing task");
                        et.refs += 1;
                        et.dependents.push(id);
                        if et.state != TaskState::Memory {
                            waiting_on += 1;
                        }
                    }
                    None => waiting_on += 1,
                }
            }
            let task = Task {
                key,
                graph: graph_id,
                prefix,
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
                deps: my_deps,
                dependents: my_dependents,
                state: TaskState::Released,
                waiting_on,
                refs,
                wanted: wanted[i],
                done: false,
                holds_deps: true,
                failure: None,
                who_has: Vec::new(),
                nbytes: 0,
                format: DataFormat::Opaque,
                processing_on: None,
                estimate: 0.0,
                retries_left: spec.retries,
                suspicious: 0,
                priority: Priority::new(spec.priority, order, ranks[i]),
                steal_pending: false,
                replica_pending: None,
            };
            count += 1;
            self.counts[TaskState::Released as usize] += 1;
            if waiting_on == 0 {
                fresh.push(id);
            } else {
                waiting.push(id);
            }
            self.tasks.insert(id, task);
        }
        for &id in &waiting {
            self.set_state(id, TaskState::Waiting);
        }
        for id in fresh {
            self.enqueue(id);
        }
        Added {
            count,
            outputs: outputs.iter().map(|&o| ids[o as usize]).collect(),
            existing: existing.into_iter().flatten().collect(),
        }
    }

    /// Forgets a graph: its running tasks are cancelled and its results
    /// dropped from the workers. Safe to call twice.
    pub fn remove_graph(&mut self, graph_id: GraphId) -> bool {
        let Some(graph) = self.graphs.remove(&graph_id) else {
            return false;
        };
        for id in graph.keys.into_values() {
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
        if t.state == TaskState::Erred {
            return Err(LocateError::Erred(key.to_string()));
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

/// What `add_tasks` did.
pub(super) struct Added {
    /// New tasks.
    pub count: usize,
    /// The outputs' task ids, in the order asked for.
    pub outputs: Vec<TaskId>,
    /// Earlier tasks of the graph the submission named.
    pub existing: Vec<TaskId>,
}

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
    #[error("task {0:?} erred: it has no result")]
    Erred(String),
}
