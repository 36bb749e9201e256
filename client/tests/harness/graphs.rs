//! Graphs the tests run, with their answers computed in closed form.

#![allow(dead_code)]

use daskrs_client::{Client, Graph, Output, output};
use daskrs_core::TaskSpec;

pub fn range(key: &str, start: i64, stop: i64) -> TaskSpec {
    TaskSpec::new(key, "range").payload(format!(r#"{{"start": {start}, "stop": {stop}}}"#))
}

pub fn sleep(key: &str, ms: u64, input: &str) -> TaskSpec {
    TaskSpec::new(key, "sleep")
        .payload(format!(r#"{{"ms": {ms}}}"#))
        .deps([input])
}

/// A binary tree of `kind` over `keys`; returns the root's key.
pub fn tree(tasks: &mut Vec<TaskSpec>, prefix: &str, kind: &str, mut keys: Vec<String>) -> String {
    let mut level = 0;
    while keys.len() > 1 {
        keys = keys
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| {
                let key = format!("{prefix}{level}-{i}");
                tasks.push(TaskSpec::new(&key, kind).deps(pair.to_vec()));
                key
            })
            .collect();
        level += 1;
    }
    keys.remove(0)
}

/// Sum of `chunks` ranges of `size` integers covering 0..chunks*size, each
/// going through a `sleep` of `ms`, reduced by a tree: answer n(n-1)/2.
pub fn slow_sum(chunks: usize, size: i64, ms: u64) -> (Vec<TaskSpec>, String, i64) {
    let mut tasks = Vec::new();
    let mut keys = Vec::new();
    for c in 0..chunks as i64 {
        tasks.push(range(&format!("x{c}"), c * size, (c + 1) * size));
        tasks.push(sleep(&format!("s{c}"), ms, &format!("x{c}")));
        let k = format!("p{c}");
        tasks.push(TaskSpec::new(&k, "sum").deps([format!("s{c}")]));
        keys.push(k);
    }
    let root = tree(&mut tasks, "t", "sum", keys);
    let n = chunks as i64 * size;
    (tasks, root, n * (n - 1) / 2)
}

pub fn ints(o: &Output) -> Vec<i64> {
    output::values(o, usize::MAX)
        .unwrap()
        .0
        .iter()
        .map(|v| v.parse().unwrap())
        .collect()
}

pub fn int(o: &Output) -> i64 {
    let v = ints(o);
    assert_eq!(v.len(), 1, "{} has {} values", o.key, v.len());
    v[0]
}

/// A graph wanting only `root`.
pub fn rooted(tasks: Vec<TaskSpec>, root: String) -> Graph {
    Graph {
        tasks,
        outputs: vec![root],
        ..Graph::default()
    }
}

/// Runs [`slow_sum`] to the end and checks its answer.
pub async fn check_slow_sum(client: &Client, chunks: usize, size: i64, ms: u64) {
    let (tasks, root, want) = slow_sum(chunks, size, ms);
    let out = client.compute(rooted(tasks, root), |_| {}).await.unwrap();
    assert_eq!(int(&out[0]), want);
}

/// Starts `graph` in the background and returns once the scheduler has
/// accepted it.
pub async fn start_graph(
    client: &Client,
    graph: Graph,
) -> tokio::task::JoinHandle<Result<Vec<Output>, daskrs_client::Error>> {
    let run = {
        let client = client.clone();
        tokio::spawn(async move { client.compute(graph, |_| {}).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.info().await.unwrap().graphs == 0 {
        assert!(std::time::Instant::now() < deadline, "graph not accepted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    run
}
