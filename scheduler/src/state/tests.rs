//! The state machine driven without a network: a small simulator plays the
//! workers, computing each task's value from its inputs' values.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use daskrs_core::{Assignment, DataFormat, GraphError, TaskSpec, TaskState};
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
        waited: 0.0005,
        stop: 0.0,
        thread: 0,
        fetch: None,
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
                python: String::new(),
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
            GraphEvent::Finished { outputs, .. } if *id == g => Some(outputs),
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
        // Progress by prefix adds up to the graph's.
        for g in self.state.graphs.values() {
            let mut counts = [0u64; TaskState::ALL.len()];
            for p in &g.prefixes {
                for (c, n) in counts.iter_mut().zip(p.counts) {
                    *c += n;
                }
            }
            assert_eq!(counts, g.counts, "graph {} by prefix", g.id);
            let done: u64 = g.prefixes.iter().map(|p| p.done).sum();
            assert_eq!(done, g.n_done, "graph {} done by prefix", g.id);
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
fn a_finished_graph_says_where_its_time_went_by_task_prefix() {
    let mut sim = Sim::new(2);
    // Two stages of a SQL query: four tasks, then one that reads them all.
    let mut tasks: Vec<TaskSpec> = (0..4)
        .map(|i| TaskSpec::new(format!("s0.{i}"), "sleep").payload(r#"{"ms":1}"#))
        .collect();
    tasks.push(
        TaskSpec::new("s1.0", "sleep")
            .payload(r#"{"ms":1}"#)
            .deps((0..4).map(|i| format!("s0.{i}"))),
    );
    let g = submit(&mut sim, tasks, &["s1.0"]);
    sim.run_to_end();
    let prefixes = sim
        .events
        .iter()
        .find_map(|(id, e)| match e {
            GraphEvent::Finished { prefixes, .. } if *id == g => Some(prefixes.clone()),
            _ => None,
        })
        .expect("finished");
    // Each simulated task runs 1 ms after waiting 0.5 ms, and makes 8 bytes.
    let shown: Vec<(&str, u64, u64)> = prefixes
        .iter()
        .map(|(p, t)| (p.as_str(), t.tasks, t.nbytes))
        .collect();
    assert_eq!(shown, [("s0", 4, 32), ("s1", 1, 8)]);
    assert!((prefixes[0].1.seconds - 0.004).abs() < 1e-9);
    assert!((prefixes[0].1.waited - 0.002).abs() < 1e-9);
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
    assert_eq!(sim.state.graphs[&g].keys.len(), 2);
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
    let tasks: Vec<TaskSpec> = (0..5)
        .map(|i| TaskSpec::new(format!("t-{i}"), "noop"))
        .collect();
    let g = submit(&mut sim, tasks, &[]);
    // The first runs alone; once it took a millisecond, the others look short.
    sim.run_one(0, false);
    let first = *sim.queued.keys().next().unwrap();
    assert_eq!(sim.queued[&first].len(), 4, "short tasks are pipelined");
    // The worker learns they are slow only as they finish; meanwhile the estimate says long.
    for p in &mut sim.state.graphs.get_mut(&g).unwrap().prefixes {
        p.totals.seconds = p.totals.tasks as f64;
    }
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

// ---------------------------------------------------------------- sessions

fn open(sim: &mut Sim) -> GraphId {
    sim.state.open_session("s".into())
}

fn submit_to(sim: &mut Sim, g: GraphId, tasks: Vec<TaskSpec>, outputs: &[&str]) {
    sim.state
        .submit_to(
            g,
            Submission {
                name: String::new(),
                tasks,
                outputs: outputs.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap();
    sim.pump();
}

fn release(sim: &mut Sim, g: GraphId, keys: &[&str]) {
    let keys: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    sim.state.release_keys(g, &keys);
    sim.pump();
}

fn done_keys(sim: &Sim) -> Vec<String> {
    let mut keys: Vec<String> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            GraphEvent::Done(o) => Some(o.key.clone()),
            _ => None,
        })
        .collect();
    keys.sort();
    keys
}

fn erred(sim: &Sim) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            GraphEvent::Erred { key, failure } => Some((key.clone(), failure.key.clone())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

impl Sim {
    /// Every task's `refs` is the client's want plus the dependents that
    /// still need it, and every task is wanted or depended on.
    fn check_refs(&self) {
        for (id, t) in &self.state.tasks {
            let holders = t
                .dependents
                .iter()
                .filter(|d| self.state.tasks[d].holds_deps)
                .count() as u32;
            assert_eq!(
                t.refs,
                u32::from(t.wanted) + holders,
                "refs of {} ({id}, {})",
                t.key,
                t.state
            );
            assert!(
                t.wanted || !t.dependents.is_empty(),
                "{} ({}) is kept though nothing wants or depends on it",
                t.key,
                t.state
            );
            for d in &t.deps {
                assert!(
                    self.state.tasks[d].dependents.contains(id),
                    "{} is not among its dependency's dependents",
                    t.key
                );
            }
        }
    }
}

#[test]
fn a_session_keeps_wanted_keys_across_submissions_until_released() {
    let mut sim = Sim::new(2);
    let g = open(&mut sim);
    let first = vec![
        TaskSpec::new("a", "noop"),
        TaskSpec::new("b", "noop").deps(["a"]),
    ];
    submit_to(&mut sim, g, first.clone(), &["b"]);
    sim.run_to_end();
    assert_eq!(done_keys(&sim), vec!["b"]);
    // A later submission uses b, which stays on the workers.
    let second = vec![TaskSpec::new("c", "noop").deps(["b"])];
    submit_to(&mut sim, g, second, &["c"]);
    sim.run_to_end();
    assert_eq!(done_keys(&sim), vec!["b", "c"]);
    let want = expected(&[first.clone(), vec![TaskSpec::new("c", "noop").deps(["b"])]].concat());
    assert_eq!(sim.value(g, "c"), want["c"]);
    assert_eq!(sim.value(g, "b"), want["b"]);
    sim.check_no_leaks();
    sim.check_refs();

    // Released: b's result goes, but it is kept to recompute c from.
    release(&mut sim, g, &["b"]);
    let held: usize = sim.held.values().map(|h| h.len()).sum();
    assert_eq!(held, 1, "only c is held");
    assert!(sim.state.graphs[&g].keys.contains_key("b"));
    sim.check_refs();
    release(&mut sim, g, &["c"]);
    assert!(sim.held.values().all(|h| h.is_empty()));
    assert!(sim.state.tasks.is_empty(), "{:?}", sim.state.tasks.keys());
    assert!(sim.state.graphs[&g].keys.is_empty());
    for s in TaskState::ALL {
        assert_eq!(sim.state.count(s), 0, "{s}");
    }
}

#[test]
fn a_key_submitted_again_is_not_computed_again() {
    let mut sim = Sim::new(1);
    let g = open(&mut sim);
    submit_to(&mut sim, g, vec![TaskSpec::new("a", "noop")], &["a"]);
    sim.run_to_end();
    let ran = sim.state.totals.tasks_finished;
    // Submitted again, and twice in one submission: reported done at once.
    submit_to(
        &mut sim,
        g,
        vec![TaskSpec::new("a", "noop"), TaskSpec::new("a", "noop")],
        &["a"],
    );
    sim.run_to_end();
    assert_eq!(sim.state.totals.tasks_finished, ran);
    assert_eq!(done_keys(&sim), vec!["a", "a"]);
}

#[test]
fn releasing_a_key_before_it_finishes_cancels_what_only_it_needed() {
    let mut sim = Sim::new(1);
    let g = open(&mut sim);
    let tasks = vec![
        TaskSpec::new("a", "noop"),
        TaskSpec::new("b", "noop").deps(["a"]),
        TaskSpec::new("c", "noop").deps(["b"]),
        TaskSpec::new("x", "noop"),
    ];
    submit_to(&mut sim, g, tasks, &["c", "x"]);
    sim.run_one(0, false);
    assert!(
        sim.state.count(TaskState::Processing) + sim.state.count(TaskState::Queued) > 0,
        "work is under way"
    );
    release(&mut sim, g, &["c"]);
    sim.check_refs();
    sim.run_to_end();
    // Only x is left, computed.
    assert_eq!(done_keys(&sim), vec!["x"]);
    let keys: Vec<&str> = sim.state.graphs[&g].keys.keys().map(|k| &**k).collect();
    assert_eq!(keys, vec!["x"]);
    sim.check_no_leaks();
}

#[test]
fn an_erred_task_errs_what_needs_it_and_the_session_goes_on() {
    let mut sim = Sim::new(1);
    let g = open(&mut sim);
    let tasks = vec![
        TaskSpec::new("bad", "noop"),
        TaskSpec::new("after", "noop").deps(["bad"]),
        TaskSpec::new("good", "noop"),
    ];
    submit_to(&mut sim, g, tasks, &["after", "bad", "good"]);
    // Fail whichever task runs first until "bad" has failed.
    loop {
        let next = sim
            .queued
            .values()
            .flatten()
            .next()
            .map(|c| c.key.to_string());
        match next.as_deref() {
            Some("bad") => {
                sim.run_one(0, true);
                break;
            }
            Some(_) => {
                sim.run_one(0, false);
            }
            None => panic!("bad never ran"),
        }
    }
    sim.run_to_end();
    assert_eq!(done_keys(&sim), vec!["good"]);
    assert_eq!(
        erred(&sim),
        vec![
            ("after".to_string(), "bad".to_string()),
            ("bad".to_string(), "bad".to_string())
        ]
    );
    // Later work that needs the erred key errs at once, the same way.
    submit_to(
        &mut sim,
        g,
        vec![TaskSpec::new("later", "noop").deps(["bad"])],
        &["later"],
    );
    assert!(erred(&sim).contains(&("later".to_string(), "bad".to_string())));
    sim.check_refs();
    release(&mut sim, g, &["after", "bad", "good", "later"]);
    assert!(sim.state.tasks.is_empty());
    assert!(sim.held.values().all(|h| h.is_empty()));
}

#[test]
fn a_submission_with_a_key_the_session_does_not_have_is_refused_whole() {
    let mut sim = Sim::new(1);
    let g = open(&mut sim);
    let err = sim
        .state
        .submit_to(
            g,
            Submission {
                name: String::new(),
                tasks: vec![
                    TaskSpec::new("ok", "noop"),
                    TaskSpec::new("x", "noop").deps(["gone"]),
                ],
                outputs: vec!["x".into(), "ok".into()],
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("\"gone\""), "{err}");
    assert!(sim.state.tasks.is_empty());
    assert!(matches!(
        sim.state.submit_to(999, Submission::default()),
        Err(GraphError::NotOpen { graph: 999 })
    ));
}

#[test]
fn closing_a_session_drops_everything_it_held() {
    let mut sim = Sim::new(2);
    let g = open(&mut sim);
    submit_to(&mut sim, g, diamond(), &["b", "d"]);
    sim.run_one(0, false);
    assert!(sim.state.remove_graph(g));
    sim.pump();
    assert!(sim.state.tasks.is_empty());
    assert!(sim.held.values().all(|h| h.is_empty()));
    assert!(sim.queued.values().all(|q| q.is_empty()));
}

#[derive(Debug, Clone)]
enum SessionStep {
    /// Submits the next tasks (all of those before too, as a dask graph
    /// would), wanting some of the new ones.
    Submit(usize, u64),
    Release(usize),
    Run(usize),
    Fail(usize),
    Kill(usize),
    Join,
}

fn session_step() -> impl Strategy<Value = SessionStep> {
    prop_oneof![
        2 => (1usize..8, any::<u64>()).prop_map(|(n, w)| SessionStep::Submit(n, w)),
        2 => any::<usize>().prop_map(SessionStep::Release),
        8 => any::<usize>().prop_map(SessionStep::Run),
        1 => any::<usize>().prop_map(SessionStep::Fail),
        1 => any::<usize>().prop_map(SessionStep::Kill),
        1 => Just(SessionStep::Join),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sessions_under_random_submissions_releases_and_failures_keep_only_what_is_needed(
        n in 1usize..30,
        edges in proptest::collection::vec((0usize..30, 0usize..30), 0..60),
        steps in proptest::collection::vec(session_step(), 0..150),
        workers in 1u32..4,
    ) {
        let tasks = random_dag(n, &edges);
        let want = expected(&tasks);
        let mut sim = Sim::new(workers);
        let g = open(&mut sim);
        let mut submitted = 0;
        let mut wanted: Vec<String> = Vec::new();
        for s in steps {
            match s {
                SessionStep::Submit(k, bits) => {
                    if submitted == n {
                        continue;
                    }
                    let hi = (submitted + k).min(n);
                    let mut outs: Vec<String> = (submitted..hi)
                        .filter(|i| bits >> (i % 64) & 1 == 1)
                        .map(|i| format!("t{i}"))
                        .collect();
                    if outs.is_empty() {
                        outs.push(format!("t{}", hi - 1));
                    }
                    let outs_ref: Vec<&str> = outs.iter().map(String::as_str).collect();
                    submit_to(&mut sim, g, tasks[..hi].to_vec(), &outs_ref);
                    submitted = hi;
                    wanted.extend(outs);
                }
                SessionStep::Release(i) => {
                    if !wanted.is_empty() {
                        let k = wanted.swap_remove(i % wanted.len());
                        release(&mut sim, g, &[k.as_str()]);
                    }
                }
                SessionStep::Run(i) => { sim.run_one(i, false); }
                SessionStep::Fail(i) => { sim.run_one(i, true); }
                SessionStep::Kill(i) => sim.kill(i),
                SessionStep::Join => { sim.add_worker(2); }
            }
            sim.check_no_leaks();
            sim.check_refs();
        }
        sim.run_to_end();
        sim.check_no_leaks();
        sim.check_refs();
        // Every key still wanted is computed right, or erred because it or
        // something it needs failed; nothing is left half way.
        for k in &wanted {
            let id = sim.state.graphs[&g].keys[k.as_str()];
            let t = &sim.state.tasks[&id];
            match t.state {
                TaskState::Memory => prop_assert_eq!(sim.value(g, k), want[k]),
                TaskState::Erred => {
                    let f = t.failure.as_ref().expect("an erred task says why");
                    prop_assert!(f.error == "boom" || f.error.contains("workers died"), "{}", f.error);
                }
                other => prop_assert!(false, "{} is {} at the end", k, other),
            }
        }
        // What is held is what is wanted, no more.
        let held: HashSet<TaskId> = sim.held.values().flat_map(|h| h.keys().copied()).collect();
        for id in &held {
            prop_assert!(sim.state.tasks[id].wanted, "{} is held but not wanted", sim.state.tasks[id].key);
        }
        let all: Vec<&str> = wanted.iter().map(String::as_str).collect();
        release(&mut sim, g, &all);
        prop_assert!(sim.state.tasks.is_empty(), "left: {:?}", sim.state.tasks.values().map(|t| (&t.key, t.state)).collect::<Vec<_>>());
        prop_assert!(sim.held.values().all(|h| h.is_empty()));
        prop_assert!(sim.state.workers.values().all(|w| w.processing.is_empty() && w.nbytes == 0));
        for s in TaskState::ALL {
            prop_assert_eq!(sim.state.count(s), 0, "{}", s);
        }
    }
}

#[test]
fn a_graph_over_the_task_limit_is_refused_until_tasks_are_let_go() {
    let mut state = State::new(StateConfig {
        max_tasks: 4,
        ..StateConfig::default()
    });
    let sub = |tasks: Vec<TaskSpec>| Submission {
        name: "t".into(),
        tasks,
        outputs: Vec::new(),
    };
    let (g, _) = state.submit(sub(diamond())).expect("4 tasks fit");
    let e = state
        .submit(sub(vec![TaskSpec::new("x", "noop")]))
        .unwrap_err();
    assert_eq!(
        e,
        GraphError::TooManyTasks {
            held: 4,
            adding: 1,
            limit: 4
        }
    );
    assert!(e.to_string().contains("--max-tasks"), "{e}");
    // A session's submissions count too, and nothing of a refused one stays.
    let s = state.open_session("s".into());
    assert!(matches!(
        state.submit_to(s, sub(vec![TaskSpec::new("y", "noop")])),
        Err(GraphError::TooManyTasks { held: 4, .. })
    ));
    assert!(state.remove_graph(g));
    assert_eq!(
        state.submit_to(s, sub(vec![TaskSpec::new("y", "noop")])),
        Ok(1)
    );
}

/// Found by the fuzz target `service::fuzz::scripts`: a copy reported at
/// another size than its task's was added at one size and taken off at the
/// other, which overflowed the worker's byte count.
#[test]
fn a_copy_reported_at_another_size_is_counted_at_its_tasks_size() {
    let mut sim = Sim::new(2);
    let g = submit(&mut sim, vec![TaskSpec::new("a", "noop")], &["a"]);
    sim.run_to_end();
    let a = sim.state.graphs[&g].keys["a"];
    let holder = sim.state.tasks[&a].who_has[0];
    let other = *sim.held.keys().find(|&&w| w != holder).unwrap();
    sim.state.replica_added(other, a, 1 << 40);
    assert_eq!(sim.state.workers[&other].nbytes, sim.state.tasks[&a].nbytes);
    assert!(sim.state.remove_graph(g));
    sim.pump();
    assert!(sim.state.workers.values().all(|w| w.nbytes == 0));
}

/// Two tasks of one prefix, of `bytes` and 8 bytes, run in half a
/// millisecond each on two one-thread workers, then two more of that
/// prefix that read both: where the scheduler sends these, by worker.
fn placement_of_readers(bytes: u64) -> HashMap<WorkerId, Vec<String>> {
    let mut sim = Sim::new(2);
    let mut tasks = vec![TaskSpec::new("x-0", "noop"), TaskSpec::new("x-1", "noop")];
    for i in 2..4 {
        tasks.push(TaskSpec::new(format!("x-{i}"), "noop").deps(["x-0", "x-1"]));
    }
    submit(&mut sim, tasks, &["x-2", "x-3"]);
    let roots: Vec<(WorkerId, Assignment)> = sim
        .queued
        .iter_mut()
        .flat_map(|(w, q)| q.drain(..).map(|a| (*w, a)).collect::<Vec<_>>())
        .collect();
    assert_eq!(roots.len(), 2, "one root per worker");
    assert_ne!(roots[0].0, roots[1].0);
    for (w, a) in roots {
        let nbytes = if &*a.key == "x-0" { bytes } else { 8 };
        sim.held.get_mut(&w).unwrap().insert(a.task, 1);
        sim.state.task_finished(
            w,
            Finished {
                nbytes,
                ..finished(a.task, 0.0005)
            },
        );
        sim.pump();
    }
    sim.queued
        .iter()
        .map(|(w, q)| (*w, q.iter().map(|a| a.key.to_string()).collect()))
        .collect()
}

#[test]
fn a_task_goes_to_an_idle_worker_rather_than_queue_for_a_few_bytes_of_input() {
    // The worker holding x-0 has fewer bytes to fetch for both readers,
    // and its tasks look short enough to queue a second behind the first:
    // the idle worker still starts the other at once (4 KiB move in 0.04 ms).
    let placed = placement_of_readers(4 << 10);
    assert!(
        placed.values().all(|keys| keys.len() == 1),
        "one reader per worker: {placed:?}"
    );
}

#[test]
fn a_task_follows_an_input_that_takes_longer_to_move_than_to_wait_for() {
    // 100 MB to fetch is a second at the assumed bandwidth; the task
    // queued ahead of it is expected to take half a millisecond.
    let placed = placement_of_readers(100 << 20);
    let mut counts: Vec<usize> = placed.values().map(|k| k.len()).collect();
    counts.sort_unstable();
    assert_eq!(counts, [0, 2], "both readers where x-0 is: {placed:?}");
}

#[test]
fn the_task_stream_keeps_the_newest_runs_with_their_prefix_worker_and_thread() {
    let mut sim = Sim::new(0);
    sim.state = State::new(StateConfig {
        task_stream_len: 5,
        ..StateConfig::default()
    });
    let w = sim.add_worker(2);
    let tasks: Vec<TaskSpec> = (0..8)
        .map(|i| TaskSpec::new(format!("inc-{i}"), "noop"))
        .chain([TaskSpec::new("sum-aggregate-1", "noop").deps(["inc-0", "inc-7"])])
        .collect();
    // Every task is wanted, so none is pruned.
    let keys: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
    let outputs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let g = submit(&mut sim, tasks, &outputs);
    let mut stop = 10.0;
    while let Some(c) = sim
        .queued
        .get_mut(&w)
        .and_then(|q| (!q.is_empty()).then(|| q.remove(0)))
    {
        sim.held
            .get_mut(&w)
            .unwrap()
            .insert(c.task, value_of(&c.key, &[]));
        stop += 1.0;
        sim.state.task_finished(
            w,
            Finished {
                stop,
                thread: (stop as u32) % 2,
                fetch: Some((stop - 0.75, stop - 0.5)),
                ..finished(c.task, 0.25)
            },
        );
        sim.pump();
    }
    assert!(sim.finished(g).is_some());
    assert_eq!(sim.state.stream.len(), 5, "the newest five of nine");
    assert_eq!(sim.state.stream.last_seq(), 9);
    let records: Vec<&Record> = sim.state.stream.after(0, 0.0, 100).collect();
    let last = records.last().unwrap();
    assert_eq!((last.worker, last.start, last.stop), (w, 18.75, 19.0));
    match &last.what {
        What::Task {
            key,
            prefix,
            thread,
            fetch,
            ..
        } => {
            assert_eq!((&**key, &**prefix), ("sum-aggregate-1", "sum-aggregate"));
            assert_eq!((*thread, *fetch), (1, Some((18.25, 18.5))));
        }
        other => panic!("{other:?}"),
    }
    // Spills of a worker the scheduler knows are marked; others are not.
    sim.state.spilled(w, 20.0, 20.5, 1 << 20);
    sim.state.spilled(999, 20.0, 20.5, 1 << 20);
    assert_eq!(sim.state.stream.last_seq(), 10);
    sim.check_no_leaks();
}

#[test]
fn progress_by_prefix_counts_each_state_and_recomputations() {
    let mut sim = Sim::new(2);
    let tasks: Vec<TaskSpec> = (0..6)
        .map(|i| TaskSpec::new(format!("load-{i}"), "noop"))
        .chain((0..3).map(|i| {
            TaskSpec::new(format!("pair-{i}"), "noop")
                .deps([format!("load-{}", 2 * i), format!("load-{}", 2 * i + 1)])
        }))
        .collect();
    let g = submit(&mut sim, tasks, &["pair-0", "pair-1", "pair-2"]);
    let prefix = |sim: &Sim, name: &str| {
        let p = sim.state.graphs[&g].prefix_named(name).unwrap();
        (p.total(), p.done, p.counts[TaskState::Processing as usize])
    };
    assert_eq!(prefix(&sim, "load"), (6, 0, 2));
    assert_eq!(prefix(&sim, "pair").0, 3);
    sim.run_one(0, false);
    sim.run_one(1, false);
    assert_eq!(prefix(&sim, "load").1, 2);
    sim.check_no_leaks();
    // A worker lost with results: they are counted as not done again.
    sim.kill(0);
    sim.check_no_leaks();
    sim.run_to_end();
    assert_eq!(prefix(&sim, "load"), (6, 6, 0));
    assert_eq!(prefix(&sim, "pair"), (3, 3, 0));
    sim.check_no_leaks();
}

#[test]
fn a_query_in_a_session_counts_its_answer_in_its_last_stage() {
    let mut sim = Sim::new(1);
    let g = sim.state.open_session("s".into());
    let tasks = vec![
        TaskSpec::new("sql-1/s0.0", "noop"),
        TaskSpec::new("sql-1/s0.1", "noop"),
        TaskSpec::new("sql-1", "noop").deps(["sql-1/s0.0", "sql-1/s0.1"]),
    ];
    sim.state
        .submit_to(
            g,
            Submission {
                name: String::new(),
                tasks,
                outputs: vec!["sql-1".into()],
            },
        )
        .unwrap();
    let explain = "Stage 0: 2 tasks, reads table t (key x), output shuffled into 1 pieces\n  SomeExec\n\
                   Stage 1: 1 task, reads stage 0 (shuffle), output returned to the client\n  OtherExec\n";
    sim.state
        .describe_query(g, "sql-1/", explain.to_string(), Some("sql-1"));
    sim.pump();
    let q = &sim.state.graphs[&g].queries[0];
    assert_eq!(
        q.stages(),
        vec![
            (
                0,
                2,
                "2 tasks, reads table t (key x), output shuffled into 1 pieces".to_string()
            ),
            (
                1,
                1,
                "1 task, reads stage 0 (shuffle), output returned to the client".to_string()
            ),
        ]
    );
    let stage = |sim: &Sim, s: u32| {
        let graph = &sim.state.graphs[&g];
        let p = graph
            .prefix_named(&graph.queries[0].stage_prefix(s))
            .unwrap();
        (p.total(), p.done)
    };
    assert_eq!((stage(&sim, 0), stage(&sim, 1)), ((2, 0), (1, 0)));
    sim.check_no_leaks();
    sim.run_to_end();
    assert_eq!((stage(&sim, 0).1, stage(&sim, 1).1), (2, 1));
    sim.check_no_leaks();
}

#[test]
fn memory_history_keeps_the_last_minutes_a_sample_per_heartbeat() {
    let mut sim = Sim::new(1);
    let w = *sim.held.keys().next().unwrap();
    let beat = |sim: &mut Sim, at: f64, managed: u64| {
        sim.state.heartbeat(
            w,
            WorkerReport {
                managed_bytes: managed,
                process_bytes: managed + 100,
                pause_bytes: 800,
                at,
                ..WorkerReport::default()
            },
        )
    };
    for i in 0..700 {
        beat(&mut sim, f64::from(i), i as u64);
    }
    // A second heartbeat at once (a pause) adds no sample.
    beat(&mut sim, 699.1, 5);
    let ws = &sim.state.workers[&w];
    let history = &ws.memory_history;
    assert_eq!(ws.pause_bytes, 800);
    assert_eq!(history.len(), 300, "seconds 400 to 699");
    assert_eq!(history.front().unwrap().at, 400.0);
    let last = history.back().unwrap();
    assert_eq!((last.at, last.managed, last.process), (699.0, 699, 799));
}

#[test]
fn a_query_run_as_its_own_graph_has_its_stages_by_key() {
    let mut sim = Sim::new(2);
    let tasks = vec![
        TaskSpec::new("s0.0", "noop"),
        TaskSpec::new("s0.1", "noop"),
        TaskSpec::new("s1.0", "noop").deps(["s0.0", "s0.1"]),
    ];
    let g = submit(&mut sim, tasks, &["s1.0"]);
    let explain = "Stage 0: 2 tasks, reads files, output shuffled into 1 pieces\n\
                   Stage 1: 1 task, reads stage 0 (shuffle), output returned to the client\n";
    sim.state.describe_query(g, "", explain.to_string(), None);
    sim.run_to_end();
    let graph = &sim.state.graphs[&g];
    let q = &graph.queries[0];
    for (stage, tasks, _) in q.stages() {
        let p = graph.prefix_named(&q.stage_prefix(stage)).unwrap();
        assert_eq!((p.total(), p.done), (tasks, tasks), "stage {stage}");
    }
    sim.check_no_leaks();
}

#[test]
fn a_workers_clock_offset_is_the_least_delay_seen() {
    let mut sim = Sim::new(1);
    let w = *sim.held.keys().next().unwrap();
    assert_eq!(sim.state.clock_offset(w, 5.0), 5.0);
    assert_eq!(sim.state.clock_offset(w, 7.5), 5.0, "a batch that waited");
    assert_eq!(sim.state.clock_offset(w, 4.25), 4.25);
    assert_eq!(sim.state.clock_offset(999, 9.0), 9.0, "an unknown worker");
}
