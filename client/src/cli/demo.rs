//! `daskrs demo`: a local cluster computing statistics over sample data it
//! makes itself, checked against the same sums computed here.

use std::time::{Duration, Instant};

use daskrs_client::local::{LocalCluster, LocalConfig};
use daskrs_client::{Client, Graph, Output, output};
use daskrs_core::TaskSpec;

use super::{DemoArgs, Failure, system_memory};

/// Pairs up `keys` with `kind` tasks until one is left.
fn tree(tasks: &mut Vec<TaskSpec>, prefix: &str, kind: &str, mut keys: Vec<String>) -> String {
    let mut level = 0;
    while keys.len() > 1 {
        let mut next = Vec::new();
        for (i, pair) in keys.chunks(2).enumerate() {
            let key = format!("{prefix}-{level}-{i}");
            tasks.push(TaskSpec::new(&key, kind).deps(pair.to_vec()));
            next.push(key);
        }
        keys = next;
        level += 1;
    }
    keys.remove(0)
}

fn demo_graph(chunks: u32, chunk_size: u64) -> Graph {
    let mut tasks = Vec::new();
    let mut sums = Vec::new();
    let mut squares = Vec::new();
    let mut mins = Vec::new();
    let mut maxs = Vec::new();
    for c in 0..chunks {
        let x = format!("x-{c}");
        tasks.push(
            TaskSpec::new(&x, "random").payload(format!(r#"{{"n": {chunk_size}, "seed": {c}}}"#)),
        );
        for (kind, list, key) in [
            ("sum", &mut sums, format!("sum-{c}")),
            ("min", &mut mins, format!("min-{c}")),
            ("max", &mut maxs, format!("max-{c}")),
        ] {
            tasks.push(TaskSpec::new(&key, kind).deps([x.clone()]));
            list.push(key);
        }
        let sq = format!("sq-{c}");
        tasks.push(TaskSpec::new(&sq, "mul").deps([x.clone(), x.clone()]));
        let sqs = format!("sqsum-{c}");
        tasks.push(TaskSpec::new(&sqs, "sum").deps([sq]));
        squares.push(sqs);
    }
    let sum = tree(&mut tasks, "total", "sum", sums);
    let sq = tree(&mut tasks, "squares", "sum", squares);
    let min = tree(&mut tasks, "minimum", "min", mins);
    let max = tree(&mut tasks, "maximum", "max", maxs);
    Graph {
        name: "demo".into(),
        tasks,
        outputs: vec![sum, sq, min, max],
    }
}

fn scalar(o: &Output) -> Result<f64, Failure> {
    let (vals, _) = output::values(o, 1).map_err(|e| Failure::new(1, e))?;
    vals.first()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Failure::new(1, format!("result {} is not a number", o.key)))
}

pub async fn demo(a: DemoArgs) -> Result<(), Failure> {
    if a.workers == 0 || a.chunks == 0 || a.chunk_size == 0 {
        return Err(Failure::new(
            2,
            "--workers, --chunks and --chunk-size must be at least 1",
        ));
    }
    let dir = tempfile::tempdir()
        .map_err(|e| Failure::new(3, format!("cannot make a temporary directory: {e}")))?;
    let started = Instant::now();
    let cluster = LocalCluster::start(LocalConfig {
        workers: a.workers,
        threads_per_worker: 1,
        memory_limit: system_memory() / u64::from(a.workers),
        listen: ([127, 0, 0, 1], 0).into(),
        http_listen: None,
        local_dir: dir.path().to_path_buf(),
    })
    .await
    .map_err(|e| Failure::new(3, e.to_string()))?;
    let client = Client::connect(&cluster.address()).await?;
    client
        .wait_for_workers(a.workers as usize, Duration::from_secs(10))
        .await?;
    let up = started.elapsed();
    let graph = demo_graph(a.chunks, a.chunk_size);
    let n_tasks = graph.tasks.len();
    let total = u64::from(a.chunks) * a.chunk_size;
    println!(
        "daskrs demo: {} workers, {} chunks x {} random values = {} values, {} tasks",
        a.workers, a.chunks, a.chunk_size, total, n_tasks
    );
    let bar = super::run::progress_bar(true);
    let t0 = Instant::now();
    let outputs = client
        .compute(graph, |p| {
            if let Some(b) = &bar {
                b.set_length(p.total);
                b.set_position(p.done);
            }
        })
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let outputs = outputs?;
    let took = t0.elapsed();
    let [sum, squares, min, max] = [0, 1, 2, 3].map(|i| scalar(&outputs[i]));
    let (sum, squares, min, max) = (sum?, squares?, min?, max?);
    let mean = sum / total as f64;
    let std = (squares / total as f64 - mean * mean).max(0.0).sqrt();
    println!("  mean  {mean:.6}   (uniform [0, 1): 0.5)");
    println!(
        "  std   {std:.6}   (uniform [0, 1): {:.6})",
        (1.0f64 / 12.0).sqrt()
    );
    println!("  min   {min:.3e}");
    println!("  max   {max:.9}");
    println!(
        "  cluster up in {:.3}s, computed in {:.3}s ({:.0} tasks/s, {:.1} M values/s)",
        up.as_secs_f64(),
        took.as_secs_f64(),
        n_tasks as f64 / took.as_secs_f64(),
        total as f64 / took.as_secs_f64() / 1e6
    );
    drop(client);
    cluster.shutdown().await;
    let (want_sum, want_min, want_max) = local_check(a.chunks, a.chunk_size)?;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    if !(close(sum, want_sum) && min == want_min && max == want_max) {
        return Err(Failure::new(
            1,
            format!(
                "cluster and local results differ: sum {sum} vs {want_sum}, min {min} vs {want_min}, max {max} vs {want_max}"
            ),
        ));
    }
    println!("  checked against the same data summed in this process: equal");
    Ok(())
}

/// The same sample data made and reduced here, without the cluster.
fn local_check(chunks: u32, chunk_size: u64) -> Result<(f64, f64, f64), Failure> {
    let registry = daskrs_worker::kinds::Registry::builtin();
    let random = registry.get("random").expect("random is a built-in kind");
    let (mut sum, mut min, mut max) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
    for c in 0..chunks {
        let data = random
            .run(
                format!(r#"{{"n": {chunk_size}, "seed": {c}}}"#).as_bytes(),
                &[],
            )
            .map_err(|e| Failure::new(1, e))?;
        let arrays = data.arrays().map_err(|e| Failure::new(1, e))?;
        for a in arrays {
            let f = a
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .ok_or_else(|| Failure::new(1, "random data is not Float64"))?;
            sum += arrow::compute::sum(f).unwrap_or(0.0);
            min = min.min(arrow::compute::min(f).unwrap_or(f64::INFINITY));
            max = max.max(arrow::compute::max(f).unwrap_or(f64::NEG_INFINITY));
        }
    }
    Ok((sum, min, max))
}
