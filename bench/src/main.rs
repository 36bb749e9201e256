//! Task throughput of a daskrs cluster (a scheduler and two worker processes
//! of the release `daskrs` binary on loopback), printed next to the figures
//! of Python Dask's LocalCluster on the same machine when given them.
//!
//! Workloads, as in Dask's own benchmarks:
//! - map: `n` independent tasks (like `client.map(inc, range(n))`), timed
//!   from submission until every task has finished;
//! - tree: a binary-tree reduction over `leaves` leaf tasks (about 2x leaves
//!   tasks), timed until its one result is gathered.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use daskrs_bench::{Proc, Security, connect, start_scheduler};
use daskrs_client::{Client, Graph};
use daskrs_core::TaskSpec;

#[derive(Parser)]
struct Args {
    /// The `daskrs` binary to benchmark (a release build).
    #[arg(long)]
    daskrs: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    map_tasks: usize,
    #[arg(long, default_value_t = 10_000)]
    tree_leaves: usize,
    /// Runs of each workload; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// JSON printed by bench/dask_tasks.py with Dask's default settings.
    #[arg(long)]
    dask_json: Option<PathBuf>,
    /// The same with `--worker-saturation inf` (Dask's queuing off).
    #[arg(long)]
    dask_tuned_json: Option<PathBuf>,
}

/// User plus system CPU seconds a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn map_graph(n: usize) -> Graph {
    Graph {
        name: "map".into(),
        tasks: (0..n)
            .map(|i| TaskSpec::new(format!("inc-{i}"), "noop"))
            .collect(),
        outputs: Vec::new(),
    }
}

fn tree_graph(leaves: usize) -> (Graph, String) {
    let mut tasks: Vec<TaskSpec> = (0..leaves)
        .map(|i| {
            TaskSpec::new(format!("leaf-{i}"), "range")
                .payload(format!(r#"{{"start": {i}, "stop": {}}}"#, i + 1))
        })
        .collect();
    let mut keys: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
    let mut level = 0;
    while keys.len() > 1 {
        // As on the Dask side: the odd key out moves up a level as is, so
        // `leaves` leaves make `leaves - 1` additions.
        keys = keys
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| match pair {
                [a, b] => {
                    let key = format!("add-{level}-{i}");
                    tasks.push(TaskSpec::new(&key, "sum").deps([a.clone(), b.clone()]));
                    key
                }
                _ => pair[0].clone(),
            })
            .collect();
        level += 1;
    }
    let root = keys.remove(0);
    (
        Graph {
            name: "tree".into(),
            tasks,
            outputs: vec![root.clone()],
        },
        root,
    )
}

struct Measured {
    tasks: usize,
    seconds: f64,
    scheduler_cpu: f64,
}

async fn measure(
    client: &Client,
    scheduler_pid: u32,
    graph: Graph,
    root: Option<&str>,
) -> Measured {
    let tasks = graph.tasks.len();
    let cpu0 = cpu_seconds(scheduler_pid);
    let t0 = Instant::now();
    let finished = client.run(graph, |_| {}).await.expect("graph runs");
    if let Some(root) = root {
        let out = client
            .gather(&finished, root)
            .await
            .expect("result gathers");
        std::hint::black_box(out);
    }
    let seconds = t0.elapsed().as_secs_f64();
    drop(finished);
    // Let the release of the graph finish before reading the scheduler's CPU.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Measured {
        tasks,
        seconds,
        scheduler_cpu: cpu_seconds(scheduler_pid) - cpu0,
    }
}

/// A scheduler and two workers, with or without a token and TLS.
struct Cluster {
    client: Client,
    pid: u32,
    _procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

async fn start_cluster(daskrs: &std::path::Path, secure: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let security = secure.then(|| Security::make(daskrs, dir.path()));
    let (scheduler, address) = start_scheduler(
        daskrs,
        dir.path(),
        &Security::env_of(security.as_ref(), "scheduler"),
    );
    let pid = scheduler.0.id();
    let mut procs = vec![scheduler];
    for i in 0..2 {
        let mut cmd = Command::new(daskrs);
        cmd.envs(Security::env_of(security.as_ref(), "worker"));
        procs.push(Proc(
            cmd.args([
                "worker",
                "--scheduler",
                &address,
                "--nthreads",
                "1",
                "--port",
                "0",
                "--http-port",
                "0",
            ])
            .args(["--name", &format!("bench-{i}"), "--host", "127.0.0.1"])
            .arg("--local-dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("the daskrs binary starts"),
        ));
    }
    let client = connect(&address, security.as_ref()).await;
    client
        .wait_for_workers(2, Duration::from_secs(20))
        .await
        .unwrap();
    // Warm up: connections, and the scheduler's estimates of each kind.
    measure(&client, pid, map_graph(200), None).await;
    let (g, root) = tree_graph(200);
    measure(&client, pid, g, Some(&root)).await;
    Cluster {
        client,
        pid,
        _procs: procs,
        _dir: dir,
    }
}

fn keep_best(best: &mut Option<Measured>, m: Measured) {
    if best.as_ref().is_none_or(|b| m.seconds < b.seconds) {
        *best = Some(m);
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // The same workloads on a cluster without a token and TLS and on one
    // with both, in turns (each first every other round), so both see the
    // same machine.
    let plain = start_cluster(&args.daskrs, false).await;
    let guarded = start_cluster(&args.daskrs, true).await;
    let mut best: [[Option<Measured>; 2]; 2] = Default::default();
    for round in 0..args.repeat {
        let mut order = [(0, &plain), (1, &guarded)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (i, c) in order {
            keep_best(
                &mut best[i][0],
                measure(&c.client, c.pid, map_graph(args.map_tasks), None).await,
            );
            let (g, root) = tree_graph(args.tree_leaves);
            keep_best(
                &mut best[i][1],
                measure(&c.client, c.pid, g, Some(&root)).await,
            );
        }
    }
    let [[best_map, best_tree], [token_map, token_tree]] = best;
    let read = |p: &Option<PathBuf>| -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(p.as_ref()?).ok()?;
        serde_json::from_str(text.lines().last()?).ok()
    };
    let (dask, tuned) = (read(&args.dask_json), read(&args.dask_tuned_json));

    println!(
        "Task throughput: scheduler + 2 worker processes x 1 thread, loopback, best of {}",
        args.repeat
    );
    println!(
        "{:<6} {:>7} {:>10} {:>14} {:>13} {:>12} {:>8} {:>12} {:>8}",
        "shape",
        "tasks",
        "daskrs s",
        "daskrs task/s",
        "sched us/task",
        "dask task/s",
        "ratio",
        "tuned task/s",
        "ratio"
    );
    let cell = |d: &Option<serde_json::Value>, name: &str, rate: f64| -> (String, String) {
        match d.as_ref().and_then(|d| d[name]["tasks_per_s"].as_f64()) {
            Some(r) => (format!("{r:.0}"), format!("{:.1}x", rate / r)),
            None => ("-".into(), "-".into()),
        }
    };
    for (name, m) in [("map", &best_map), ("tree", &best_tree)] {
        let m = m.as_ref().unwrap();
        let rate = m.tasks as f64 / m.seconds;
        let (d, dr) = cell(&dask, name, rate);
        let (t, tr) = cell(&tuned, name, rate);
        println!(
            "{:<6} {:>7} {:>10.3} {:>14.0} {:>13.2} {:>12} {:>8} {:>12} {:>8}",
            name,
            m.tasks,
            m.seconds,
            rate,
            m.scheduler_cpu / m.tasks as f64 * 1e6,
            d,
            dr,
            t,
            tr
        );
    }
    println!(
        "With a cluster token on every call and TLS on every connection (same run, turn about):"
    );
    println!(
        "{:<6} {:>12} {:>12} {:>8}",
        "shape", "off task/s", "on task/s", "cost"
    );
    for (name, off, on) in [
        ("map", &best_map, &token_map),
        ("tree", &best_tree, &token_tree),
    ] {
        let rate = |m: &Option<Measured>| {
            let m = m.as_ref().unwrap();
            m.tasks as f64 / m.seconds
        };
        let (off, on) = (rate(off), rate(on));
        println!(
            "{:<6} {:>12.0} {:>12.0} {:>7.1}%",
            name,
            off,
            on,
            (off - on) / off * 100.0
        );
    }
    if let Some(d) = dask.as_ref().or(tuned.as_ref()) {
        println!(
            "dask {}; 'dask' is LocalCluster(n_workers=2, threads_per_worker=1) as installed, 'tuned' the same with worker-saturation inf",
            d["dask_version"].as_str().unwrap_or("?")
        );
    }
}
