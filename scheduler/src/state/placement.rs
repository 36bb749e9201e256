//! Placement: which worker runs which queued task, and stealing for idle
//! workers.

use std::cmp::Reverse;
use std::sync::Arc;

use daskrs_core::{Assignment, Location, TaskState};

use super::task::{TaskId, WorkerId};
use super::worker::{WorkerState, WorkerStatus};
use super::{
    BANDWIDTH, FETCH_SECONDS, MAX_WINDOW_PER_THREAD, MIN_STEAL_SECONDS, PIPELINE_SECONDS, Priority,
    State, ToWorker,
};

impl State {
    /// Whether the worker runs tasks of this kind: the built-in kinds run
    /// everywhere, the others where the worker said so when it registered.
    pub(super) fn runs(w: &WorkerState, kind: &str) -> bool {
        daskrs_core::kinds::is_builtin(kind) || w.kinds.iter().any(|k| k == kind)
    }

    /// Whether some worker that is not leaving runs this kind (a paused
    /// one will take tasks again).
    pub(super) fn kind_offered(&self, kind: &str) -> bool {
        self.workers
            .values()
            .any(|w| w.status != WorkerStatus::Retiring && Self::runs(w, kind))
    }

    /// Whether the worker has room for a task expected to run `estimate`
    /// seconds: a free thread, or else queued work, this task's included,
    /// short enough to pipeline.
    fn can_take(w: &WorkerState, estimate: f64) -> bool {
        if !w.accepts_tasks() {
            return false;
        }
        let threads = w.nthreads as usize;
        let n = w.processing.len();
        n < threads
            || (w.occupancy + estimate < w.nthreads as f64 * PIPELINE_SECONDS
                && n < threads * MAX_WINDOW_PER_THREAD)
    }

    /// The worker to run a task on: the one expected to start it soonest,
    /// counting the work queued there per thread and the time to fetch the
    /// inputs it lacks (Dask's objective, with a round trip per input);
    /// then fewest bytes to move, then fewest tasks. A worker that holds a
    /// few bytes of the inputs but is busy does not win over an idle one.
    /// Never `except`, the worker a task was just stolen from. Returns the
    /// worker and the task's expected run time.
    fn pick_worker(&self, id: TaskId, except: Option<WorkerId>) -> Option<(WorkerId, f64)> {
        let t = &self.tasks[&id];
        let estimate = self.estimate(t);
        let fits = |w: &WorkerState| {
            Some(w.id) != except && Self::can_take(w, estimate) && Self::runs(w, &t.kind)
        };
        if t.deps.is_empty()
            && let Some((graph, w)) = self.last_root
            && graph == t.graph
            && self.workers.get(&w).is_some_and(fits)
        {
            return Some((w, estimate));
        }
        let mut best: Option<(f64, u64, usize, WorkerId)> = None;
        for w in self.workers.values() {
            if !fits(w) {
                continue;
            }
            let (mut to_move, mut fetches) = (0u64, 0u32);
            for d in &t.deps {
                let dt = &self.tasks[d];
                if !dt.who_has.contains(&w.id) {
                    to_move += dt.nbytes;
                    fetches += 1;
                }
            }
            let start = w.occupancy / w.nthreads as f64
                + fetches as f64 * FETCH_SECONDS
                + to_move as f64 / BANDWIDTH;
            let cand = (start, to_move, w.processing.len(), w.id);
            let better = match &best {
                None => true,
                Some(b) => (cand.0, cand.1, cand.2) < (b.0, b.1, b.2),
            };
            if better {
                best = Some(cand);
            }
        }
        best.map(|b| (b.3, estimate))
    }

    /// Hands queued tasks to workers with room, best first.
    pub fn schedule(&mut self) {
        while let Some(&std::cmp::Reverse((_, id))) = self.queue.peek() {
            let live = self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state == TaskState::Queued);
            if !live {
                self.queue.pop();
                continue;
            }
            if !self.kind_offered(&self.tasks[&id].kind) {
                // No worker runs it: it waits aside, so the tasks behind it
                // are not held up, until a worker that does joins.
                let entry = self.queue.pop().expect("peeked");
                self.no_worker.push(entry);
                continue;
            }
            let Some((worker, estimate)) = self.pick_worker(id, None) else {
                break;
            };
            self.queue.pop();
            self.assign(id, worker, estimate);
        }
        if self.queue.is_empty() {
            self.steal_for_idle();
        }
    }

    fn assign(&mut self, id: TaskId, worker: WorkerId, est: f64) {
        self.set_state(id, TaskState::Processing);
        let t = self.tasks.get_mut(&id).expect("queued task exists");
        if t.deps.is_empty() {
            self.last_root = Some((t.graph, worker));
        }
        t.processing_on = Some(worker);
        t.estimate = est;
        let w = self.workers.get_mut(&worker).expect("picked worker exists");
        w.processing.insert(id);
        w.occupancy += est;
        let t = &self.tasks[&id];
        let mut locations = Vec::new();
        for d in &t.deps {
            let dt = &self.tasks[d];
            if dt.who_has.contains(&worker) {
                continue;
            }
            let addresses = dt
                .who_has
                .iter()
                .filter_map(|h| self.workers.get(h).map(|w| w.address.clone()))
                .collect();
            locations.push(Location {
                task: *d,
                addresses,
                nbytes: dt.nbytes,
            });
        }
        let compute = Assignment {
            task: id,
            key: t.key.clone(),
            kind: t.kind.clone(),
            payload: t.payload.clone(),
            inputs: t.inputs.clone(),
            locations,
            priority: t.priority,
        };
        self.outbox
            .to_workers
            .push((worker, ToWorker::Compute(compute)));
    }

    /// With nothing queued, a worker with idle threads takes tasks that wait
    /// in another worker's queue, if they are long enough to be worth it.
    fn steal_for_idle(&mut self) {
        let idle: Vec<(WorkerId, usize)> = self
            .workers
            .values()
            .filter(|w| w.accepts_tasks() && w.processing.len() < w.nthreads as usize)
            .map(|w| (w.id, w.nthreads as usize - w.processing.len()))
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut wanted: usize = idle.iter().map(|(_, n)| n).sum();
        let tasks = &self.tasks;
        self.stealing
            .retain(|id| tasks.get(id).is_some_and(|t| t.steal_pending));
        wanted = wanted.saturating_sub(self.stealing.len());
        if wanted == 0 {
            return;
        }
        let idle_runs = |kind: &str| {
            idle.iter()
                .any(|(w, _)| self.workers.get(w).is_some_and(|w| Self::runs(w, kind)))
        };
        let mut victims: Vec<&WorkerState> = self
            .workers
            .values()
            .filter(|w| w.processing.len() > w.nthreads as usize)
            .collect();
        victims.sort_by_key(|w| std::cmp::Reverse(w.processing.len()));
        let mut requests = Vec::new();
        for v in victims {
            // Queues of short tasks drain faster than a steal round trip.
            if v.occupancy / (v.processing.len() as f64) < MIN_STEAL_SECONDS {
                continue;
            }
            let mut spare = v.processing.len() - v.nthreads as usize;
            // The last in the worker's order run last: those are the ones to take.
            let mut cands: Vec<(Priority, TaskId)> = v
                .processing
                .iter()
                .filter_map(|id| self.tasks.get(id).map(|t| (t, *id)))
                .filter(|(t, _)| {
                    !t.steal_pending && t.estimate >= MIN_STEAL_SECONDS && idle_runs(&t.kind)
                })
                .map(|(t, id)| (t.priority, id))
                .collect();
            cands.sort_unstable_by(|a, b| b.cmp(a));
            for (_, id) in cands {
                if spare == 0 || wanted == 0 {
                    break;
                }
                requests.push((v.id, id));
                spare -= 1;
                wanted -= 1;
            }
        }
        for (victim, id) in requests {
            self.tasks
                .get_mut(&id)
                .expect("candidate exists")
                .steal_pending = true;
            self.stealing.push(id);
            self.outbox.to_workers.push((victim, ToWorker::Steal(id)));
        }
    }

    /// Tasks set aside because no worker runs their kind go back to the
    /// queue when a worker joins.
    pub(super) fn requeue_no_worker(&mut self) {
        if self.no_worker.is_empty() {
            return;
        }
        let offered: Vec<_> = std::mem::take(&mut self.no_worker);
        self.queue.extend(offered);
    }

    /// Queued tasks that wait for a worker of their kind, by kind.
    pub fn no_worker(&self) -> Vec<(Arc<str>, u64)> {
        let mut by_kind: std::collections::BTreeMap<Arc<str>, u64> = Default::default();
        for Reverse((_, id)) in &self.no_worker {
            if let Some(t) = self.tasks.get(id)
                && t.state == TaskState::Queued
            {
                *by_kind.entry(t.kind.clone()).or_default() += 1;
            }
        }
        by_kind.into_iter().collect()
    }

    /// The worker answers a steal request.
    pub fn steal_response(&mut self, worker: WorkerId, id: TaskId, stolen: bool) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.state != TaskState::Processing || t.processing_on != Some(worker) {
            return;
        }
        t.steal_pending = false;
        if !stolen {
            return;
        }
        self.take_from_processing(worker, id);
        self.totals.steals += 1;
        // Stolen for an idle worker: it must not go back where it was.
        self.set_state(id, TaskState::Queued);
        match self.pick_worker(id, Some(worker)) {
            Some((to, estimate)) => self.assign(id, to, estimate),
            None => {
                let t = &self.tasks[&id];
                self.queue.push(Reverse((t.priority, id)));
            }
        }
        self.schedule();
    }
}
