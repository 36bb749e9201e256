//! The worker count the current work would want, for the operator's adaptive
//! scaling: read from the state, never changing it.

use daskrs_core::TaskState;

use super::State;

impl State {
    /// Workers the current work would want: the queued and running work's
    /// expected seconds spread so each thread has about `target_seconds`,
    /// never more than there are tasks to run, and none when idle.
    pub fn desired_workers(&self, target_seconds: f64) -> usize {
        let queued = self.count(TaskState::Queued) + self.count(TaskState::Waiting);
        let processing = self.count(TaskState::Processing);
        if queued + processing == 0 {
            return 0;
        }
        let threads_per_worker = if self.workers.is_empty() {
            1.0
        } else {
            self.workers
                .values()
                .map(|w| w.nthreads as f64)
                .sum::<f64>()
                / self.workers.len() as f64
        };
        let mut work: f64 = self.workers.values().map(|w| w.occupancy).sum();
        for t in self.tasks.values() {
            if matches!(t.state, TaskState::Queued | TaskState::Waiting) {
                work += self.estimate(t);
            }
        }
        let by_work = (work / (target_seconds * threads_per_worker)).ceil() as usize;
        let by_tasks = ((queued + processing) as f64 / threads_per_worker).ceil() as usize;
        by_work.clamp(1, by_tasks.max(1))
    }
}
