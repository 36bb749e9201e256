//! Sessions: the graph a client's futures live in, as Dask's "who wants".
//!
//! A session grows with each submission; a submission's tasks may depend on
//! keys the session already has, and a key it already has is not computed
//! again. The keys a submission names as outputs are wanted by the client
//! until it releases them (or closes the session), and each is reported
//! once, done or erred. A task that fails errs with what depends on it;
//! the rest of the session goes on.
//!
//! A task lives while the client wants it or another task may need it:
//! `refs` counts the client's want and the dependents that still need the
//! result. At zero the result is dropped, or the task is cancelled when it
//! had not finished; once nothing depends on it any more it is forgotten,
//! and so in turn may be its dependencies.

use daskrs_core::{GraphError, TaskState};

use super::graph::{Graph, OutputInfo, Submission};
use super::task::{Failure, GraphId, TaskId};
use super::{GraphEvent, State, ToWorker};

impl State {
    /// Opens an empty session for one client.
    pub fn open_session(&mut self, name: String) -> GraphId {
        let id = self.next_graph;
        self.next_graph += 1;
        self.graphs.insert(id, Graph::new(id, name, true));
        tracing::info!(graph = id, "session opened");
        id
    }

    /// Adds a submission to a session and returns how many tasks are new.
    /// Nothing is added when it is invalid.
    pub fn submit_to(
        &mut self,
        session: GraphId,
        mut sub: Submission,
    ) -> Result<usize, GraphError> {
        let Some(g) = self.graphs.get(&session).filter(|g| g.session) else {
            return Err(GraphError::NotOpen { graph: session });
        };
        // A key names one computation: one the session has, or that the
        // submission repeats, is not added again.
        let mut seen = std::collections::HashSet::new();
        sub.tasks
            .retain(|t| !g.keys.contains_key(t.key.as_str()) && seen.insert(t.key.clone()));
        let checked = self.check(sub.tasks, &sub.outputs, &g.keys)?;
        let order = self.next_graph;
        self.next_graph += 1;
        let added = self.add_tasks(session, order, checked);

        // Earlier tasks named again: wanted now, or needed again.
        for &id in &added.outputs {
            let t = self.tasks.get_mut(&id).expect("output exists");
            if !t.wanted {
                t.wanted = true;
                t.refs += 1;
            }
            match t.state {
                TaskState::Memory if added.existing.contains(&id) => {
                    let done = OutputInfo {
                        key: t.key.to_string(),
                        nbytes: t.nbytes,
                        format: t.format,
                    };
                    self.outbox
                        .to_clients
                        .push((session, GraphEvent::Done(done)));
                }
                TaskState::Erred => {
                    if let Some(failure) = t.failure.clone() {
                        let key = t.key.to_string();
                        self.outbox
                            .to_clients
                            .push((session, GraphEvent::Erred { key, failure }));
                    }
                }
                _ => {}
            }
        }
        for &id in &added.existing {
            match self.tasks[&id].state {
                TaskState::Released => self.need(id),
                TaskState::Erred => {
                    let failure = self.tasks[&id].failure.as_deref().cloned();
                    if let Some(failure) = failure {
                        self.spread_failure(id, failure);
                    }
                }
                _ => {}
            }
        }
        tracing::debug!(graph = session, tasks = added.count, "submission added");
        self.schedule();
        Ok(added.count)
    }

    /// The client lets go of keys: what nobody needs any more is dropped,
    /// cancelled if it runs, and forgotten.
    pub fn release_keys(&mut self, session: GraphId, keys: &[String]) {
        let Some(g) = self.graphs.get(&session).filter(|g| g.session) else {
            return;
        };
        let ids: Vec<TaskId> = keys
            .iter()
            .filter_map(|k| g.keys.get(k.as_str()).copied())
            .collect();
        for id in ids {
            let t = self
                .tasks
                .get_mut(&id)
                .expect("a session key's task exists");
            if !t.wanted {
                continue;
            }
            t.wanted = false;
            t.refs -= 1;
            self.drop_unneeded(id);
        }
        self.schedule();
    }

    /// Lets go of what `id` and, in turn, its dependencies no longer need.
    fn drop_unneeded(&mut self, id: TaskId) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            if t.refs > 0 {
                continue;
            }
            match t.state {
                TaskState::Memory => {
                    self.drop_copies(id);
                    self.set_state(id, TaskState::Released);
                }
                TaskState::Processing => {
                    let worker = t.processing_on.expect("a processing task has a worker");
                    self.take_from_processing(worker, id);
                    // The worker cancels it, or drops its result when it ends.
                    self.outbox.to_workers.push((worker, ToWorker::Free(id)));
                    self.set_state(id, TaskState::Released);
                }
                TaskState::Waiting | TaskState::Queued => self.set_state(id, TaskState::Released),
                TaskState::Released | TaskState::Erred | TaskState::Forgotten => {}
            }
            let t = self.tasks.get_mut(&id).expect("task exists");
            let deps = if std::mem::replace(&mut t.holds_deps, false) {
                t.deps.clone()
            } else {
                Vec::new()
            };
            for d in deps {
                let dt = self.tasks.get_mut(&d).expect("dependency exists");
                dt.refs -= 1;
                if dt.refs == 0 {
                    stack.push(d);
                }
            }
            let t = &self.tasks[&id];
            if t.dependents.is_empty() && !t.wanted {
                stack.extend(self.forget(id));
            }
        }
    }

    /// Removes a task nothing needs or depends on; returns its dependencies
    /// that nothing depends on any more.
    fn forget(&mut self, id: TaskId) -> Vec<TaskId> {
        let t = self.tasks.remove(&id).expect("forgotten task exists");
        self.counts[t.state as usize] -= 1;
        if let Some(g) = self.graphs.get_mut(&t.graph) {
            g.keys.remove(&t.key);
            g.recount(t.prefix, Some(t.state), None);
            if t.done {
                g.count_done(t.prefix, false);
            }
            g.dirty = true;
        }
        let mut orphans = Vec::new();
        for d in t.deps {
            if let Some(dt) = self.tasks.get_mut(&d) {
                dt.dependents.retain(|&x| x != id);
                if dt.dependents.is_empty() && dt.refs == 0 {
                    orphans.push(d);
                }
            }
        }
        orphans
    }

    /// A task erred for good in a session: it and every task that needs it
    /// err with `failure`, and let go of their inputs.
    pub(super) fn spread_failure(&mut self, origin: TaskId, failure: Failure) {
        let graph = self.tasks[&origin].graph;
        let failure = Box::new(failure);
        let mut unneeded = Vec::new();
        let mut stack = vec![origin];
        while let Some(id) = stack.pop() {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            if id == origin && t.state == TaskState::Erred {
                // Erred before: what was added since errs the same way.
                stack.extend(t.dependents.iter().copied());
                continue;
            }
            if id != origin && matches!(t.state, TaskState::Erred | TaskState::Memory) {
                continue;
            }
            if let Some(w) = t.processing_on {
                self.take_from_processing(w, id);
                if id != origin {
                    self.outbox.to_workers.push((w, ToWorker::Free(id)));
                }
            }
            self.set_state(id, TaskState::Erred);
            let t = self.tasks.get_mut(&id).expect("task exists");
            t.failure = Some(failure.clone());
            if t.wanted {
                self.outbox.to_clients.push((
                    graph,
                    GraphEvent::Erred {
                        key: t.key.to_string(),
                        failure: failure.clone(),
                    },
                ));
            }
            if std::mem::replace(&mut t.holds_deps, false) {
                for d in t.deps.clone() {
                    let dt = self.tasks.get_mut(&d).expect("dependency exists");
                    dt.refs -= 1;
                    if dt.refs == 0 {
                        unneeded.push(d);
                    }
                }
            }
            stack.extend(self.tasks[&id].dependents.iter().copied());
        }
        for d in unneeded {
            self.drop_unneeded(d);
        }
    }
}
