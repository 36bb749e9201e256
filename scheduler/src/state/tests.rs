//! The state machine driven without a network: a small simulator plays the
//! workers, computing each task's value from its inputs' values.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use daskrs_core::{Assignment, DataFormat, TaskSpec, TaskState};
use proptest::prelude::*;

use super::*;

/// What the simulated workers report for a task that ran `duration` seconds.
fn finished(task: TaskId, duration: f64) -> Finished {
    Finished {
        task,
        nbytes: 8,
        format: DataFormat::Arrow,
        duration,
        transfer_bytes: 0,
    }
}

/// A simulated cluster: each worker's held values and its task queue.
struct Sim {
    state: State,
    held: HashMap<WorkerId, HashMap<TaskId, u64>>,
    queued: HashMap<WorkerId, Vec<Assignment>>,
    addr: HashMap<String, WorkerId>,
    events: Vec<(GraphId, GraphEvent)>,
    next_name: u32,
}

fn value_of(key: &str, inputs: &[u64]) -> u64 {
    let own: u64 = key.bytes().map(u64::from).sum();
    inputs
        .iter()
        .fold(own, |acc, v| acc.wrapping_mul(31).wrapping_add(*v))
}

impl Sim {
    fn new(workers: u32) -> Sim {
        let mut sim = Sim {
            state: State::new(StateConfig::default()),
            held: HashMap::new(),
            queued: HashMap::new(),
            addr: HashMap::new(),
            events: Vec::new(),
            next_name: 0,
        };
        for _ in 0..workers {
            sim.add_worker(1);
        }
        sim
    }

    fn add_worker(&mut self, nthreads: u32) -> WorkerId {
        self.add_worker_with(nthreads, &[])
    }

    /// A worker that runs these kinds besides the built-in ones.
    fn add_worker_with(&mut self, nthreads: u32, kinds: &[&str]) -> WorkerId {
        self.next_name += 1;
        let address = format!("w{}:8788", self.next_name);
        let id = self.state.add_worker(
            Registration {
                name: format!("w{}", self.next_name),
                address: address.clone(),
                nthreads,
                memory_limit: 1 << 30,
                kinds: kinds.iter().map(|k| k.to_string()).collect(),
            },
            Instant::now(),
        );
        self.addr.insert(address, id);
        self.held.insert(id, HashMap::new());
        self.queued.insert(id, Vec::new());
        self.pump();
        id
    }

    /// Delivers the outbox to the simulated workers and clients.
    fn pump(&mut self) {
        loop {
            let out = self.state.take_outbox();
            if out.is_empty() {
                return;
            }
            self.events.extend(out.to_clients);
            for (w, msg) in out.to_workers {
                match msg {
                    ToWorker::Compute(c) => {
                        if let Some(q) = self.queued.get_mut(&w) {
                            q.push(c)
                        }
                    }
                    ToWorker::Free(id) => {
                        if let Some(h) = self.held.get_mut(&w) {
                            h.remove(&id);
                        }
                        if let Some(q) = self.queued.get_mut(&w) {
                            q.retain(|c| c.task != id);
                        }
                    }
                    ToWorker::Steal(id) => {
                        let stolen = self.queued.get_mut(&w).is_some_and(|q| {
                            let before = q.len();
                            q.retain(|c| c.task != id);
                            q.len() < before
                        });
                        self.state.steal_response(w, id, stolen);
                    }
                    ToWorker::FetchReplica { task, addresses } => {
                        let v = addresses
                            .iter()
                            .filter_map(|a| self.addr.get(a))
                            .find_map(|src| self.held.get(src).and_then(|h| h.get(&task)).copied());
                        match v {
                            Some(v) if self.held.contains_key(&w) => {
                                self.held.get_mut(&w).unwrap().insert(task, v);
                                self.state.replica_added(w, task, 8);
                            }
                            _ => self.state.replica_failed(w, task, "gone"),
                        }
                    }
                    ToWorker::Close { .. } => {
                        self.held.remove(&w);
                        self.queued.remove(&w);
                    }
                }
            }
        }
    }

    /// Runs the `pick`-th queued task of the `which`-th worker that has one.
    fn run_one(&mut self, which: usize, fail: bool) -> bool {
        let mut ws: Vec<WorkerId> = self
            .queued
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(w, _)| *w)
            .collect();
        if ws.is_empty() {
            return false;
        }
        ws.sort_unstable();
        let w = ws[which % ws.len()];
        let c = self.queued.get_mut(&w).unwrap().remove(0);
        let mut values = Vec::new();
        let mut missing = Vec::new();
        for input in &c.inputs {
            let input = &input.task;
            let local = self.held[&w].get(input).copied();
            let remote = || {
                c.locations.iter().find(|l| l.task == *input).and_then(|l| {
                    l.addresses
                        .iter()
                        .filter_map(|a| self.addr.get(a))
                        .find_map(|src| self.held.get(src).and_then(|h| h.get(input)).copied())
                })
            };
            match local.or_else(remote) {
                Some(v) => values.push(v),
                None => missing.push(*input),
            }
        }
        if !missing.is_empty() {
            missing.dedup();
            self.state.task_erred(w, c.task, "missing".into(), missing);
        } else if fail {
            self.state.task_erred(w, c.task, "boom".into(), vec![]);
        } else {
            self.held
                .get_mut(&w)
                .unwrap()
                .insert(c.task, value_of(&c.key, &values));
            self.state.task_finished(w, finished(c.task, 0.001));
        }
        self.pump();
        true
    }

    fn kill(&mut self, which: usize) {
        let mut ws: Vec<WorkerId> = self.held.keys().copied().collect();
        if ws.len() <= 1 {
            return;
        }
        ws.sort_unstable();
        let w = ws[which % ws.len()];
        self.held.remove(&w);
        self.queued.remove(&w);
        self.state
            .remove_worker(w, RemoveReason::Disconnected("killed".into()));
        self.pump();
    }

    fn run_to_end(&mut self) {
        let mut i = 0;
        while self.run_one(i, false) {
            i += 1;
            assert!(i < 1_000_000, "does not finish");
        }
    }

    fn finished(&self, g: GraphId) -> Option<&Vec<OutputInfo>> {
        self.events.iter().find_map(|(id, e)| match e {
            GraphEvent::Finished { outputs } if *id == g => Some(outputs),
            _ => None,
        })
    }

    fn value(&self, g: GraphId, key: &str) -> u64 {
        let (id, addrs) = self.state.locate(g, key).unwrap();
        self.held[&self.addr[&addrs[0]]][&id]
    }

    /// Every result held by a worker is one the scheduler knows it holds,
    /// and is still needed.
    fn check_no_leaks(&self) {
        for (w, held) in &self.held {
            for id in held.keys() {
                let t = self
                    .state
                    .tasks
                    .get(id)
                    .unwrap_or_else(|| panic!("worker {w} holds forgotten task {id}"));
                assert!(
                    t.who_has.contains(w),
                    "worker {w} holds {} unknown to the scheduler",
                    t.key
                );
                assert!(t.refs > 0, "{} is held but nobody needs it", t.key);
            }
        }
        for t in self.state.tasks.values() {
            for w in &t.who_has {
                assert!(
                    self.held[w].contains_key(&self.state.graphs[&t.graph].keys[&t.key]),
                    "scheduler thinks {w} holds {}",
                    t.key
                );
            }
        }
    }
}

fn expected(tasks: &[TaskSpec]) -> HashMap<String, u64> {
    let mut vals: HashMap<String, u64> = HashMap::new();
    // Tasks are listed after their dependencies in these tests.
    for t in tasks {
        let ins: Vec<u64> = t.deps.iter().map(|d| vals[d]).collect();
        vals.insert(t.key.clone(), value_of(&t.key, &ins));
    }
    vals
}

fn submit(sim: &mut Sim, tasks: Vec<TaskSpec>, outputs: &[&str]) -> GraphId {
    let (g, _) = sim
        .state
        .submit(Submission {
            name: "t".into(),
            tasks,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap();
    sim.pump();
    g
}

fn diamond() -> Vec<TaskSpec> {
    vec![
        TaskSpec::new("a", "noop"),
        TaskSpec::new("b", "noop").deps(["a"]),
        TaskSpec::new("c", "noop").deps(["a"]),
        TaskSpec::new("d", "noop").deps(["b", "c"]),
    ]
}

#[test]
fn diamond_finishes_and_keeps_only_the_output() {
    let mut sim = Sim::new(2);
    let g = submit(&mut sim, diamond(), &[]);
    sim.run_to_end();
    let outs = sim.finished(g).expect("finished");
    assert_eq!(outs.len(), 1);
    assert_eq!(sim.value(g, "d"), expected(&diamond())["d"]);
    let held: usize = sim.held.values().map(|h| h.len()).sum();
    assert_eq!(held, 1, "only the output stays on the workers");
    sim.check_no_leaks();
    assert!(sim.state.remove_graph(g));
    sim.pump();
    assert!(sim.held.values().all(|h| h.is_empty()));
    assert!(sim.state.tasks.is_empty());
    for s in TaskState::ALL {
        assert_eq!(sim.state.count(s), 0, "{s}");
    }
}

#[test]
fn wide_graph_is_queued_not_flooded() {
    let mut sim = Sim::new(2);
    let tasks: Vec<TaskSpec> = (0..1000)
        .map(|i| TaskSpec::new(format!("t{i}"), "sleep").payload(r#"{"ms":1}"#))
        .collect();
    submit(&mut sim, tasks, &[]);
    // Unknown durations: one task per thread until the first ones finish.
    assert_eq!(sim.state.count(TaskState::Processing), 2);
    assert_eq!(sim.state.count(TaskState::Queued), 998);
}

#[test]
fn unneeded_tasks_are_not_run() {
    let mut sim = Sim::new(1);
    let g = submit(&mut sim, diamond(), &["b"]);
    assert_eq!(sim.state.graphs[&g].tasks.len(), 2);
    sim.run_to_end();
    assert!(sim.finished(g).is_some());
}

#[test]
fn killed_worker_results_are_recomputed() {
    let mut sim = Sim::new(2);
    let tasks = diamond();
    let g = submit(&mut sim, tasks.clone(), &[]);
    sim.run_one(0, false); // a
    sim.run_one(0, false);
    sim.run_one(1, false);
    // Kill whichever holds b or c, then finish.
    sim.kill(0);
    sim.run_to_end();
    assert!(sim.finished(g).is_some());
    assert_eq!(sim.value(g, "d"), expected(&tasks)["d"]);
    sim.check_no_leaks();
}

#[test]
fn failure_reports_key_worker_and_error_and_stops_the_graph() {
    let mut sim = Sim::new(1);
    let g = submit(&mut sim, diamond(), &[]);
    sim.run_one(0, false);
    sim.run_one(0, true);
    let failed = sim.events.iter().find_map(|(id, e)| match e {
        GraphEvent::Failed {
            key,
            worker,
            error,
            lost_outputs,
            ..
        } if *id == g => Some((
            key.clone(),
            worker.clone(),
            error.clone(),
            lost_outputs.clone(),
        )),
        _ => None,
    });
    let (key, worker, error, lost) = failed.expect("failed event");
    assert_eq!(
        (key.as_str(), worker.as_str(), error.as_str()),
        ("b", "w1", "boom")
    );
    assert_eq!(lost, vec!["d"]);
    assert!(sim.state.tasks.is_empty());
    assert!(sim.held.values().all(|h| h.is_empty()));
}

#[test]
fn stale_or_confused_worker_messages_change_nothing() {
    let mut sim = Sim::new(2);
    let g = submit(&mut sim, diamond(), &["a", "d"]);
    for _ in 0..3 {
        sim.run_one(0, false); // a, b, c
    }
    let id = |sim: &Sim, k: &str| sim.state.graphs[&g].keys[k];
    let (a, d) = (id(&sim, "a"), id(&sim, "d"));
    let runner = sim.state.tasks[&d].processing_on.expect("d is processing");
    let other = *sim.held.keys().find(|&&x| x != runner).unwrap();
    // From a worker that does not run d, or about tasks that do not exist: ignored.
    sim.state.task_erred(other, d, "x".into(), vec![a]);
    sim.state.task_finished(other, finished(999_999, 0.1));
    sim.state.steal_response(other, d, true);
    sim.state.replica_added(other, 424_242, 8);
    sim.state.heartbeat(
        777,
        WorkerReport {
            paused: true,
            ..WorkerReport::default()
        },
    );
    sim.pump();
    assert_eq!(sim.state.tasks[&d].state, TaskState::Processing);
    // `a` is wanted and held, but is not an input of d: a report that it is
    // missing must not make the scheduler forget it.
    sim.state.task_erred(runner, d, "x".into(), vec![a]);
    sim.pump();
    assert_eq!(sim.state.tasks[&a].state, TaskState::Memory);
    assert_eq!(sim.state.totals.tasks_recomputed, 0);
    sim.run_to_end();
    assert!(sim.finished(g).is_some());
    sim.check_no_leaks();
}

#[test]
fn retries_run_the_task_again() {
    let mut sim = Sim::new(1);
    let g = submit(&mut sim, vec![TaskSpec::new("a", "noop").retries(2)], &[]);
    sim.run_one(0, true);
    sim.run_one(0, true);
    assert!(sim.finished(g).is_none());
    sim.run_one(0, false);
    assert!(sim.finished(g).is_some());
}

#[test]
fn task_that_keeps_killing_workers_errs() {
    let mut sim = Sim::new(1);
    let g = submit(&mut sim, vec![TaskSpec::new("a", "noop")], &[]);
    for _ in 0..MAX_SUSPICIOUS {
        sim.add_worker(1);
        let w = sim
            .state
            .tasks
            .values()
            .next()
            .and_then(|t| t.processing_on)
            .expect("processing");
        sim.held.remove(&w);
        sim.queued.remove(&w);
        sim.state
            .remove_worker(w, RemoveReason::Disconnected("killed".into()));
        sim.pump();
    }
    assert!(sim.events.iter().any(|(id, e)| *id == g
        && matches!(e, GraphEvent::Failed { error, .. } if error.contains("died"))));
}

#[test]
fn retirement_hands_off_needed_results_first() {
    let mut sim = Sim::new(2);
    let tasks = diamond();
    let g = submit(&mut sim, tasks.clone(), &[]);
    sim.run_to_end();
    let (_, addrs) = sim.state.locate(g, "d").unwrap();
    let holder = sim.addr[&addrs[0]];
    sim.state.retire(&[holder]);
    sim.pump();
    assert!(
        !sim.state.workers.contains_key(&holder),
        "retired worker is gone"
    );
    assert_eq!(sim.value(g, "d"), expected(&tasks)["d"]);
    assert_eq!(
        sim.state.totals.tasks_recomputed, 0,
        "nothing computed twice"
    );
}

#[test]
fn idle_worker_steals_long_queued_tasks() {
    let mut sim = Sim::new(1);
    // Teach the scheduler these tasks are short, so one worker takes many.
    let warm = submit(&mut sim, vec![TaskSpec::new("w", "noop")], &[]);
    sim.run_to_end();
    sim.state.remove_graph(warm);
    sim.pump();
    let tasks: Vec<TaskSpec> = (0..4)
        .map(|i| TaskSpec::new(format!("t{i}"), "noop"))
        .collect();
    submit(&mut sim, tasks, &[]);
    let first = *sim.queued.keys().next().unwrap();
    assert_eq!(sim.queued[&first].len(), 4, "short tasks are pipelined");
    // The worker learns they are slow only as they finish; meanwhile the estimate says long.
    sim.state.estimates.insert("noop".into(), 1.0);
    for t in sim.state.tasks.values_mut() {
        t.estimate = 1.0;
    }
    for w in sim.state.workers.values_mut() {
        w.occupancy = w.processing.len() as f64;
    }
    let second = sim.add_worker(1);
    assert!(sim.state.totals.steals >= 1);
    assert_eq!(sim.queued[&second].len(), 1);
    assert_eq!(sim.queued[&first].len(), 3);
    sim.run_to_end();
}

fn random_dag(n: usize, edges: &[(usize, usize)]) -> Vec<TaskSpec> {
    let mut tasks: Vec<TaskSpec> = (0..n)
        .map(|i| TaskSpec::new(format!("t{i}"), "noop"))
        .collect();
    for &(a, b) in edges {
        let (a, b) = (a % n, b % n);
        let (lo, hi) = (a.min(b), a.max(b));
        if lo != hi && !tasks[hi].deps.contains(&format!("t{lo}")) {
            tasks[hi].deps.push(format!("t{lo}"));
        }
    }
    tasks
}

#[derive(Debug, Clone)]
enum Step {
    Run(usize),
    Kill(usize),
    Join,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => any::<usize>().prop_map(Step::Run),
        1 => any::<usize>().prop_map(Step::Kill),
        1 => Just(Step::Join),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_dags_under_random_failures_finish_right_and_leak_nothing(
        n in 1usize..40,
        edges in proptest::collection::vec((0usize..40, 0usize..40), 0..80),
        steps in proptest::collection::vec(step(), 0..200),
        workers in 1u32..4,
    ) {
        let tasks = random_dag(n, &edges);
        let want = expected(&tasks);
        let mut sim = Sim::new(workers);
        let g = submit(&mut sim, tasks.clone(), &[]);
        for s in steps {
            match s {
                Step::Run(i) => { sim.run_one(i, false); }
                Step::Kill(i) => sim.kill(i),
                Step::Join => { sim.add_worker(2); }
            }
            sim.check_no_leaks();
        }
        sim.run_to_end();
        let failed = sim.events.iter().find_map(|(id, e)| match e {
            GraphEvent::Failed { error, .. } if *id == g => Some(error.clone()),
            _ => None,
        });
        if let Some(error) = failed {
            // Only a task that was on MAX_SUSPICIOUS killed workers may fail the graph.
            prop_assert!(error.contains("workers died while running this task"), "{}", error);
            prop_assert!(sim.state.totals.workers_lost >= u64::from(MAX_SUSPICIOUS));
            prop_assert!(sim.held.values().all(|h| h.is_empty()));
            prop_assert!(sim.state.tasks.is_empty());
            return Ok(());
        }
        let outs = sim.finished(g).expect("graph finished");
        let out_keys: HashSet<String> = outs.iter().map(|o| o.key.clone()).collect();
        for o in &out_keys {
            prop_assert_eq!(sim.value(g, o), want[o]);
        }
        sim.check_no_leaks();
        // Only the outputs are still held, each once or more.
        let held: HashSet<TaskId> = sim.held.values().flat_map(|h| h.keys().copied()).collect();
        prop_assert_eq!(held.len(), out_keys.len());
        sim.state.remove_graph(g);
        sim.pump();
        prop_assert!(sim.held.values().all(|h| h.is_empty()));
        prop_assert!(sim.state.tasks.is_empty());
        prop_assert!(sim.state.workers.values().all(|w| w.processing.is_empty() && w.nbytes == 0));
    }
}

#[test]
fn python_tasks_wait_aside_for_a_worker_that_runs_them() {
    let mut sim = Sim::new(1);
    let plain = *sim.held.keys().next().unwrap();
    let tasks = vec![
        TaskSpec::new("py", "python"),
        TaskSpec::new("after", "python").deps(["py"]),
        TaskSpec::new("plain", "noop"),
    ];
    let g = submit(&mut sim, tasks, &["after", "plain"]);
    sim.run_to_end();
    // The built-in task ran; the Python one waits, and says for what.
    assert_eq!(sim.held[&plain].len(), 1);
    assert_eq!(sim.state.no_worker(), vec![(Arc::from("python"), 1)]);
    assert!(sim.finished(g).is_none());

    let py = sim.add_worker_with(1, &["python"]);
    assert!(sim.state.no_worker().is_empty());
    sim.run_to_end();
    assert!(sim.finished(g).is_some());
    // The Python tasks ran on the worker that runs Python, none elsewhere.
    assert_eq!(sim.held[&plain].len(), 1);
    assert_eq!(sim.held[&py].len(), 1);
}

#[test]
fn the_last_python_worker_leaving_sets_its_tasks_aside_again() {
    let mut sim = Sim::new(1);
    let py = sim.add_worker_with(1, &["python"]);
    let tasks: Vec<TaskSpec> = (0..4)
        .map(|i| TaskSpec::new(format!("t{i}"), "python"))
        .collect();
    let g = submit(&mut sim, tasks, &[]);
    sim.run_one(1, false);
    sim.state
        .remove_worker(py, RemoveReason::Disconnected("killed".into()));
    sim.held.remove(&py);
    sim.queued.remove(&py);
    sim.pump();
    sim.run_to_end();
    assert_eq!(sim.state.no_worker(), vec![(Arc::from("python"), 4)]);
    sim.add_worker_with(2, &["python"]);
    sim.run_to_end();
    assert!(sim.finished(g).is_some());
    assert!(sim.state.no_worker().is_empty());
}

#[test]
fn a_kind_no_worker_knows_is_still_refused() {
    let mut sim = Sim::new(1);
    let err = sim
        .state
        .submit(Submission {
            name: String::new(),
            tasks: vec![TaskSpec::new("x", "pyhton")],
            outputs: vec![],
        })
        .unwrap_err();
    assert!(err.to_string().contains("unknown kind \"pyhton\""), "{err}");
    assert!(err.to_string().contains("python"), "{err}");
}
