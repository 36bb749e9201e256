//! Per-task bookkeeping of one session: which assigned tasks wait for
//! inputs, which are ready (best first), which run. Plain data: the session
//! does the fetching and the running and tells this what happened.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use daskrs_core::{Assignment, Input, Priority};

use crate::TaskError;
use crate::data::Data;

enum Stage {
    Fetching,
    Ready,
    Running,
}

struct Assigned {
    assignment: Assignment,
    stage: Stage,
    fetched: HashMap<Input, Data>,
    pending_fetches: usize,
    missing: Vec<u64>,
    transfer_bytes: u64,
    cancelled: bool,
    /// When the assignment came, when its last input arrived from a peer
    /// (if it fetched any), and when its run started.
    arrived: Instant,
    fetched_at: Option<Instant>,
    started: Option<Instant>,
}

/// What became of an assignment when it arrived.
#[derive(Debug, PartialEq)]
pub enum Admitted {
    /// These inputs are to be fetched, from these addresses, before it can run.
    Fetch(Vec<(Input, Vec<String>)>),
    /// Everything it needs is here: it is queued to run.
    Ready,
    /// The scheduler named no holder for these inputs, and this worker has
    /// none of them: the task cannot run here.
    Missing(Vec<u64>),
    /// The task is here already (waiting, queued or running): the copy is
    /// dropped, so one task never counts twice.
    Known,
}

/// What a fetch that ended changed.
#[derive(Debug, PartialEq)]
pub enum AfterFetch {
    /// The task is no longer here: what was fetched is dropped.
    Gone,
    /// Other inputs are still on their way.
    Waiting,
    /// The last input arrived: the task is queued to run.
    Ready,
    /// Every fetch ended and these inputs could not be had.
    Missing(Vec<u64>),
}

/// What a free from the scheduler did to a task of this session.
#[derive(Debug, PartialEq)]
pub enum Freed {
    /// It runs: it is marked cancelled, and its end drops its result.
    Running,
    /// It was waiting or queued, or was not known here: forgotten.
    Forgotten,
}

/// A task handed to a thread.
pub struct Started {
    pub assignment: Assignment,
    pub fetched: HashMap<Input, Data>,
}

/// A task whose run ended.
pub struct Ended {
    pub key: std::sync::Arc<str>,
    pub kind: std::sync::Arc<str>,
    pub transfer_bytes: u64,
    /// Seconds from its arrival to its start: fetching, then waiting for a thread.
    pub waited: f64,
    /// When fetching its inputs from peers began and ended, on the
    /// process's clock ([`daskrs_core::clock`]), if it fetched any.
    pub fetch: Option<(f64, f64)>,
    /// Freed while it ran: its result is not wanted.
    pub cancelled: bool,
}

#[derive(Default)]
pub struct Tasks {
    tasks: HashMap<u64, Assigned>,
    ready: BinaryHeap<Reverse<(Priority, u64)>>,
    running: usize,
}

impl Tasks {
    /// Takes a new assignment; `held` says whether this worker has a result.
    pub fn assign(&mut self, assignment: Assignment, held: impl Fn(u64) -> bool) -> Admitted {
        let id = assignment.task;
        if self.tasks.contains_key(&id) {
            return Admitted::Known;
        }
        let mut distinct: Vec<Input> = assignment.inputs.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut fetch = Vec::new();
        let mut missing = Vec::new();
        for input in distinct {
            if held(input.task) {
                continue;
            }
            match assignment.locations.iter().find(|l| l.task == input.task) {
                Some(loc) => fetch.push((input, loc.addresses.clone())),
                None => missing.push(input.task),
            }
        }
        if fetch.is_empty() && !missing.is_empty() {
            missing.dedup();
            return Admitted::Missing(missing);
        }
        let priority = assignment.priority;
        let ready = fetch.is_empty();
        self.tasks.insert(
            id,
            Assigned {
                assignment,
                stage: if ready { Stage::Ready } else { Stage::Fetching },
                fetched: HashMap::new(),
                pending_fetches: fetch.len(),
                missing,
                transfer_bytes: 0,
                cancelled: false,
                arrived: Instant::now(),
                fetched_at: None,
                started: None,
            },
        );
        if ready {
            self.ready.push(Reverse((priority, id)));
            Admitted::Ready
        } else {
            Admitted::Fetch(fetch)
        }
    }

    /// A fetch for `task` ended, with the input or the reason it failed.
    /// `Gone` when the task was freed or stolen meanwhile.
    pub fn fetched(
        &mut self,
        task: u64,
        input: Input,
        result: Result<Data, TaskError>,
    ) -> AfterFetch {
        let Some(t) = self.tasks.get_mut(&task) else {
            return AfterFetch::Gone;
        };
        t.pending_fetches -= 1;
        match result {
            Ok(d) => {
                t.transfer_bytes += d.len();
                t.fetched.insert(input, d);
            }
            Err(e) => {
                tracing::warn!(task = %t.assignment.key, input = input.task, error = %e, "could not fetch input");
                t.missing.push(input.task);
            }
        }
        if t.pending_fetches > 0 {
            return AfterFetch::Waiting;
        }
        t.fetched_at = Some(Instant::now());
        if t.missing.is_empty() {
            t.stage = Stage::Ready;
            let p = t.assignment.priority;
            self.ready.push(Reverse((p, task)));
            return AfterFetch::Ready;
        }
        let mut missing = std::mem::take(&mut t.missing);
        missing.sort_unstable();
        missing.dedup();
        self.tasks.remove(&task);
        AfterFetch::Missing(missing)
    }

    /// The best ready task, marked running; `None` when none is ready.
    pub fn start_next(&mut self) -> Option<Started> {
        while let Some(Reverse((_, id))) = self.ready.pop() {
            // Stolen or freed while queued: skipped.
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            if !matches!(t.stage, Stage::Ready) {
                continue;
            }
            t.stage = Stage::Running;
            t.started = Some(Instant::now());
            self.running += 1;
            return Some(Started {
                assignment: t.assignment.clone(),
                fetched: std::mem::take(&mut t.fetched),
            });
        }
        None
    }

    /// The best ready task, marked running, if it is of kind `kind`: the
    /// next of a batch, which takes tasks in the order they would run.
    pub fn start_next_of(&mut self, kind: &str) -> Option<Started> {
        loop {
            let &Reverse((_, id)) = self.ready.peek()?;
            match self.tasks.get(&id) {
                Some(t) if matches!(t.stage, Stage::Ready) => {
                    if &*t.assignment.kind != kind {
                        return None;
                    }
                    return self.start_next();
                }
                // Stolen or freed while queued.
                _ => {
                    self.ready.pop();
                }
            }
        }
    }

    /// About how many tasks are ready (some may have been stolen or freed).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// A task's run ended; `None` when it was not running here.
    pub fn ended(&mut self, task: u64) -> Option<Ended> {
        match self.tasks.get(&task) {
            Some(t) if matches!(t.stage, Stage::Running) => {}
            _ => return None,
        }
        self.running -= 1;
        let t = self.tasks.remove(&task)?;
        let waited = t
            .started
            .map_or(0.0, |s| s.duration_since(t.arrived).as_secs_f64());
        Some(Ended {
            key: t.assignment.key,
            kind: t.assignment.kind,
            transfer_bytes: t.transfer_bytes,
            waited,
            fetch: t.fetched_at.map(|end| {
                use daskrs_core::clock::seconds_at;
                (seconds_at(t.arrived), seconds_at(end))
            }),
            cancelled: t.cancelled,
        })
    }

    /// The scheduler no longer wants `task` (or its result).
    pub fn free(&mut self, task: u64) -> Freed {
        if let Some(t) = self.tasks.get_mut(&task)
            && matches!(t.stage, Stage::Running)
        {
            t.cancelled = true;
            return Freed::Running;
        }
        self.tasks.remove(&task);
        Freed::Forgotten
    }

    /// The kind of a task this worker has.
    pub fn kind_of(&self, task: u64) -> Option<std::sync::Arc<str>> {
        self.tasks.get(&task).map(|t| t.assignment.kind.clone())
    }

    /// The scheduler asks for a task back; true when it had not started.
    pub fn steal(&mut self, task: u64) -> bool {
        let stolen = self
            .tasks
            .get(&task)
            .is_some_and(|t| !matches!(t.stage, Stage::Running));
        if stolen {
            self.tasks.remove(&task);
        }
        stolen
    }

    /// Tasks on the threads now.
    pub fn running(&self) -> usize {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use daskrs_core::Location;

    use super::*;

    fn task(id: u64, priority: Priority, inputs: &[u64], located: &[u64]) -> Assignment {
        Assignment {
            task: id,
            key: format!("t{id}").into(),
            kind: "noop".into(),
            payload: Bytes::new(),
            inputs: inputs
                .iter()
                .map(|&task| Input { task, piece: None })
                .collect(),
            locations: located
                .iter()
                .map(|&task| Location {
                    task,
                    addresses: vec![format!("peer-of-{task}:8788")],
                    nbytes: 8,
                })
                .collect(),
            priority,
        }
    }

    fn order(tasks: &mut Tasks) -> Vec<u64> {
        std::iter::from_fn(|| tasks.start_next().map(|s| s.assignment.task)).collect()
    }

    #[test]
    fn queued_tasks_run_by_the_users_priority_before_graph_order() {
        let mut t = Tasks::default();
        // Graph 1 came first, but graph 2's second task has priority 5.
        for (id, p) in [
            (1, Priority::new(0, 1, 0)),
            (2, Priority::new(0, 1, 1)),
            (3, Priority::new(0, 2, 0)),
            (4, Priority::new(5, 2, 1)),
            (5, Priority::new(-3, 1, 2)),
        ] {
            assert_eq!(t.assign(task(id, p, &[], &[]), |_| false), Admitted::Ready);
        }
        assert_eq!(order(&mut t), vec![4, 1, 2, 3, 5]);
        assert_eq!(t.running(), 5);
    }

    #[test]
    fn a_batch_takes_the_next_tasks_in_order_while_they_are_of_its_kind() {
        let mut t = Tasks::default();
        for (id, kind) in [
            (1, "python"),
            (2, "python"),
            (3, "python"),
            (4, "sql"),
            (5, "python"),
        ] {
            let mut a = task(id, Priority::new(0, 1, id as u32), &[], &[]);
            a.kind = kind.into();
            assert_eq!(t.assign(a, |_| false), Admitted::Ready);
        }
        // Task 2 was stolen while queued: the batch goes past it.
        assert!(t.steal(2));
        let first = t.start_next().map(|s| s.assignment.task);
        let more = std::iter::from_fn(|| t.start_next_of("python").map(|s| s.assignment.task));
        assert_eq!((first, more.collect::<Vec<_>>()), (Some(1), vec![3]));
        // Task 4 runs next, on its own; task 5 waits for its turn.
        assert_eq!(order(&mut t), vec![4, 5]);
        assert_eq!(t.running(), 4);
    }

    #[test]
    fn a_task_runs_once_its_last_input_arrives() {
        let mut t = Tasks::default();
        let a = task(9, Priority::default(), &[1, 2, 2, 3], &[1, 2]);
        // 3 is held here; 1 and 2 (named twice) are fetched once each.
        let Admitted::Fetch(fetch) = t.assign(a, |id| id == 3) else {
            panic!("nothing to fetch");
        };
        let fetched: Vec<u64> = fetch.iter().map(|(i, _)| i.task).collect();
        assert_eq!(fetched, vec![1, 2]);
        assert!(t.start_next().is_none(), "inputs are still on their way");
        let one = Input {
            task: 1,
            piece: None,
        };
        let two = Input {
            task: 2,
            piece: None,
        };
        assert_eq!(
            t.fetched(9, one, Ok(Data::opaque(vec![0; 5]))),
            AfterFetch::Waiting
        );
        assert_eq!(
            t.fetched(9, two, Ok(Data::opaque(vec![0; 3]))),
            AfterFetch::Ready
        );
        let started = t.start_next().expect("ready");
        assert_eq!(started.fetched.len(), 2);
        let ended = t.ended(9).expect("it ran");
        assert_eq!(ended.transfer_bytes, 8);
        assert!(!ended.cancelled);
        assert_eq!(t.running(), 0);
    }

    #[test]
    fn inputs_that_cannot_be_had_are_reported_once_every_fetch_ended() {
        let mut t = Tasks::default();
        let a = task(4, Priority::default(), &[1, 2], &[1, 2]);
        assert!(matches!(t.assign(a, |_| false), Admitted::Fetch(_)));
        let input = |task| Input { task, piece: None };
        assert_eq!(
            t.fetched(4, input(1), Err(TaskError::PeerGone("gone".into()))),
            AfterFetch::Waiting
        );
        assert_eq!(
            t.fetched(4, input(2), Ok(Data::empty())),
            AfterFetch::Missing(vec![1])
        );
        assert!(t.start_next().is_none());
        // An input nobody holds is missing at once.
        let b = task(5, Priority::default(), &[7], &[]);
        assert_eq!(t.assign(b, |_| false), Admitted::Missing(vec![7]));
    }

    #[test]
    fn a_free_cancels_a_running_task_and_forgets_a_queued_one() {
        let mut t = Tasks::default();
        t.assign(task(1, Priority::new(0, 1, 0), &[], &[]), |_| false);
        t.assign(task(2, Priority::new(0, 1, 1), &[], &[]), |_| false);
        t.assign(task(3, Priority::new(0, 1, 2), &[], &[]), |_| false);
        assert_eq!(t.start_next().map(|s| s.assignment.task), Some(1));
        assert_eq!(t.free(1), Freed::Running);
        assert_eq!(t.free(2), Freed::Forgotten);
        assert!(!t.steal(1), "a running task is not stolen");
        assert!(t.steal(3));
        assert!(t.start_next().is_none(), "2 was freed and 3 stolen");
        assert!(t.ended(1).expect("it ran").cancelled);
        assert!(t.ended(1).is_none(), "ends once");
        assert_eq!(
            t.fetched(
                2,
                Input {
                    task: 9,
                    piece: None
                },
                Ok(Data::empty())
            ),
            AfterFetch::Gone
        );
    }

    #[test]
    fn a_task_assigned_twice_runs_and_counts_once() {
        let mut t = Tasks::default();
        let a = task(1, Priority::default(), &[], &[]);
        assert_eq!(t.assign(a.clone(), |_| false), Admitted::Ready);
        assert!(t.start_next().is_some());
        assert_eq!(t.assign(a, |_| false), Admitted::Known);
        assert!(t.start_next().is_none());
        assert!(t.ended(1).is_some());
        assert_eq!(t.running(), 0);
    }
}
