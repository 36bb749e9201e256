//! Graceful retirement: a retiring worker takes no new tasks, finishes what
//! it runs, copies the results only it holds to other workers, then closes.

use super::task::WorkerId;
use super::worker::WorkerStatus;
use super::{RemoveReason, State, ToWorker};

impl State {
    /// Picks `count` workers to retire: idle ones first, then those holding
    /// the least data.
    pub fn workers_to_close(&self, count: usize) -> Vec<WorkerId> {
        let mut ws: Vec<_> = self
            .workers
            .values()
            .filter(|w| w.status != WorkerStatus::Retiring)
            .map(|w| (!w.processing.is_empty(), w.nbytes, w.id))
            .collect();
        ws.sort_unstable();
        ws.into_iter().take(count).map(|w| w.2).collect()
    }

    /// Finds workers by name, address or id.
    pub fn find_worker(&self, name: &str) -> Option<WorkerId> {
        self.workers
            .values()
            .find(|w| w.name == name || w.address == name || w.id.to_string() == name)
            .map(|w| w.id)
    }

    pub fn retire(&mut self, workers: &[WorkerId]) {
        for id in workers {
            if let Some(w) = self.workers.get_mut(id) {
                tracing::info!(worker = %w.name, "retiring worker");
                w.status = WorkerStatus::Retiring;
            }
        }
        self.advance_retirements();
        self.schedule();
    }

    /// Moves each retiring worker along: copies out what only it holds, and
    /// closes it once nothing it holds is needed from it alone.
    pub(super) fn advance_retirements(&mut self) {
        let retiring: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.status == WorkerStatus::Retiring && w.processing.is_empty())
            .map(|w| w.id)
            .collect();
        for id in retiring {
            let w = &self.workers[&id];
            let address = w.address.clone();
            let unique: Vec<u64> = w
                .has_what
                .iter()
                .copied()
                .filter(|t| {
                    let t = &self.tasks[t];
                    t.refs > 0 && t.who_has.len() == 1
                })
                .collect();
            let mut targets: Vec<(u64, WorkerId)> = self
                .workers
                .values()
                .filter(|o| o.id != id && o.status != WorkerStatus::Retiring)
                .map(|o| (o.nbytes, o.id))
                .collect();
            if unique.is_empty() || targets.is_empty() {
                self.outbox.to_workers.push((
                    id,
                    ToWorker::Close {
                        reason: "retired".into(),
                    },
                ));
                self.remove_worker(id, RemoveReason::Retired);
                continue;
            }
            targets.sort_unstable();
            for tid in unique {
                let t = self.tasks.get_mut(&tid).expect("held task exists");
                let pending_ok = t.replica_pending.is_some_and(|p| {
                    self.workers
                        .get(&p)
                        .is_some_and(|w| w.status != WorkerStatus::Retiring)
                });
                if pending_ok {
                    continue;
                }
                // Spread the copies: each goes to the target holding least so far.
                let (bytes, target) = targets[0];
                targets[0] = (bytes + t.nbytes, target);
                targets.sort_unstable();
                t.replica_pending = Some(target);
                self.outbox.to_workers.push((
                    target,
                    ToWorker::FetchReplica {
                        task: tid,
                        addresses: vec![address.clone()],
                    },
                ));
            }
        }
    }

    /// A worker holds a copy of a result. It counts at the size the task
    /// reported when it finished, whatever the copy's report says, so that
    /// dropping the copy later takes off what was added.
    pub fn replica_added(&mut self, worker: WorkerId, id: u64, reported: u64) {
        let nbytes = match self.tasks.get_mut(&id) {
            Some(t)
                if t.in_memory()
                    && !t.who_has.contains(&worker)
                    && self.workers.contains_key(&worker) =>
            {
                t.who_has.push(worker);
                t.replica_pending = None;
                if reported != t.nbytes {
                    tracing::warn!(
                        worker,
                        task = id,
                        reported,
                        nbytes = t.nbytes,
                        "a copy's size differs from its task's"
                    );
                }
                Some(t.nbytes)
            }
            _ => None,
        };
        if let Some(nbytes) = nbytes {
            let w = self.workers.get_mut(&worker).expect("checked above");
            w.has_what.insert(id);
            w.nbytes += nbytes;
            self.advance_retirements();
        } else {
            self.outbox.to_workers.push((worker, ToWorker::Free(id)));
        }
    }

    pub fn replica_failed(&mut self, worker: WorkerId, id: u64, error: &str) {
        if let Some(t) = self.tasks.get_mut(&id)
            && t.replica_pending == Some(worker)
        {
            tracing::warn!(task = %t.key, worker, error, "hand-off copy failed; will try again");
            t.replica_pending = None;
        }
    }
}
