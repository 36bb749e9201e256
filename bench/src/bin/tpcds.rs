//! TPC-DS, all 99 queries, on a daskrs cluster (a scheduler and two worker
//! processes of the release `daskrs` binary on loopback) next to
//! single-node DataFusion on the same files in the same run, and DuckDB's
//! figures on the same files (`bench/duckdb_tpcds.py`).
//!
//! Every daskrs answer is checked against single-node DataFusion's; a
//! query that fails or differs is named and its time left out of the totals.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use daskrs_bench::{Cluster, Common};
use daskrs_engine::{compare, tpcds};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Data and queries made by `scripts/tpcds-data.sh 1`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// JSON printed by bench/duckdb_tpcds.py: {"q1": seconds, ...}.
    #[arg(long)]
    duckdb_json: Option<PathBuf>,
}

struct Row {
    q: usize,
    daskrs: f64,
    single: f64,
    duckdb: Option<f64>,
    stages: usize,
    tasks: usize,
    /// Task time by stage in the fastest daskrs run, most first.
    stage_times: Vec<daskrs_proto::PrefixTotals>,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let data = a.data.clone().unwrap_or_else(|| tpcds::default_dir("1"));
    assert!(
        tpcds::is_complete(&data),
        "no TPC-DS data in {}: run scripts/tpcds-data.sh 1",
        data.display()
    );
    let queries = a.common.queries_or_all(99);
    let tables = tpcds::create_tables(&data.display().to_string());
    let cluster = Cluster::start(&a.common, false, &tables).await;
    let single = compare::single_node_context(None);
    compare::run_sql(&single, &tables)
        .await
        .expect("tables are created");
    let duckdb = daskrs_bench::figures(a.duckdb_json.as_deref());

    println!(
        "TPC-DS, Parquet from {}, {} workers x {} threads; best of {}",
        data.display(),
        a.common.workers,
        a.common.threads,
        a.common.repeat
    );
    println!(
        "{:<6}{:>11}{:>15}{:>8}{:>11}{:>8}{:>8}",
        "query", "daskrs s", "DataFusion s", "ratio", "DuckDB s", "stages", "tasks"
    );
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for q in queries {
        let sql = tpcds::query(&data, q).unwrap_or_else(|e| panic!("query {q}: {e}"));
        let mut best_d = f64::MAX;
        let mut answer = None;
        for _ in 0..a.common.repeat.max(1) {
            let t = Instant::now();
            match cluster.client.sql(&sql, |_| {}).await {
                Ok(got) => {
                    let took = t.elapsed().as_secs_f64();
                    if took < best_d || answer.is_none() {
                        best_d = took;
                        answer = Some(got);
                    }
                }
                Err(e) => {
                    answer = None;
                    failed.push(format!(
                        "Q{q}: {}",
                        e.to_string().lines().next().unwrap_or("")
                    ));
                    break;
                }
            }
        }
        let mut best_s = f64::MAX;
        let mut want = Vec::new();
        for _ in 0..a.common.repeat.max(1) {
            let t = Instant::now();
            want = compare::run_sql(&single, &sql)
                .await
                .unwrap_or_else(|e| panic!("Q{q}: single-node DataFusion fails: {e}"));
            best_s = best_s.min(t.elapsed().as_secs_f64());
        }
        let Some(answer) = answer else { continue };
        if compare::rows(&answer.batches) != compare::rows(&want) {
            failed.push(format!(
                "Q{q}: the answer differs from single-node DataFusion's"
            ));
            continue;
        }
        let row = Row {
            q,
            daskrs: best_d,
            single: best_s,
            duckdb: duckdb.get(format!("q{q}")).and_then(|v| v.as_f64()),
            stages: answer.stages,
            tasks: answer.tasks,
            stage_times: answer.stage_times.clone(),
        };
        println!(
            "Q{:<5}{:>11.3}{:>15.3}{:>7.2}x{:>11}{:>8}{:>8}",
            row.q,
            row.daskrs,
            row.single,
            row.daskrs / row.single,
            row.duckdb
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into()),
            row.stages,
            row.tasks
        );
        rows.push(row);
    }
    let total = |f: fn(&Row) -> f64| rows.iter().map(f).sum::<f64>();
    let (d, s) = (total(|r| r.daskrs), total(|r| r.single));
    let duck: Option<f64> = rows.iter().map(|r| r.duckdb).sum();
    println!(
        "total {d:>10.3}{s:>15.3}{:>7.2}x{:>11}   ({} queries)",
        d / s,
        duck.map(|v| format!("{v:.3}"))
            .unwrap_or_else(|| "-".into()),
        rows.len()
    );
    let mut worst: Vec<&Row> = rows.iter().collect();
    worst.sort_by(|x, y| (y.daskrs / y.single).total_cmp(&(x.daskrs / x.single)));
    println!(
        "worst ten against single-node DataFusion, with the seconds their tasks ran by stage (most first):"
    );
    for r in worst.iter().take(10) {
        println!(
            "  Q{}: {:.2}x ({:.3} s against {:.3} s), {} stages, {} tasks",
            r.q,
            r.daskrs / r.single,
            r.daskrs,
            r.single,
            r.stages,
            r.tasks
        );
        println!("      {}", daskrs_bench::stage_times(&r.stage_times, 4));
    }
    let over_2x = rows.iter().filter(|r| r.daskrs > 2.0 * r.single).count();
    println!("queries over 2x single-node DataFusion: {over_2x}");
    let far: Vec<String> = rows
        .iter()
        .filter(|r| {
            r.duckdb
                .is_some_and(|k| r.single > 10.0 * k && r.daskrs > 10.0 * k)
        })
        .map(|r| format!("Q{}", r.q))
        .collect();
    println!(
        "queries where DuckDB is ten times faster than both: {}",
        if far.is_empty() {
            "none".to_string()
        } else {
            far.join(", ")
        }
    );
    if !failed.is_empty() {
        println!("failed or differed ({}):", failed.len());
        for f in &failed {
            println!("  {f}");
        }
    }
    println!("{}", cluster.peak_memory());
}
