//! Runs one query's stage tasks in this process, one after another, and
//! prints each task's time and output size, then each stage's operators with
//! their metrics; with `--single` also DataFusion's own EXPLAIN ANALYZE.
//!
//!   daskrs-stages DATA_DIR QUERY|FILE.sql [--threads N] [--metrics] [--single]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use daskrs_engine::reader::{Codec, InputData};
use daskrs_engine::stage::StageTask;
use daskrs_engine::{Executor, Planned, Planner, StageOutput, compare, tpch};
use datafusion::physical_plan::{ExecutionPlan, display::DisplayableExecutionPlan};
use futures::StreamExt;
use prost::Message;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = &args[1];
    // A TPC-H query number, or a file of SQL.
    let text;
    let sql = match args[2].parse::<usize>() {
        Ok(q) => tpch::query(q).expect("a TPC-H query"),
        Err(_) => {
            text = std::fs::read_to_string(&args[2]).expect("a readable SQL file");
            text.as_str()
        }
    };
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .map(|i| args[i + 1].parse().expect("a thread count"))
        .unwrap_or(2);
    let tables = tpch::create_tables(data);
    if args.iter().any(|a| a == "--single") {
        let ctx = compare::single_node_context(None);
        compare::run_sql(&ctx, &tables).await.unwrap();
        let t = Instant::now();
        compare::run_sql(&ctx, sql).await.unwrap();
        println!("single node: {:.3}s", t.elapsed().as_secs_f64());
        let b = compare::run_sql(&ctx, &format!("explain analyze {sql}"))
            .await
            .unwrap();
        println!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&b).unwrap()
        );
        return;
    }
    let planner = Planner::new(None);
    planner.plan(&tables, threads).await.unwrap();
    let Planned::Query(query) = planner.plan(sql, threads).await.unwrap() else {
        panic!("not a query");
    };
    let executor = Arc::new(Executor::new(None));
    let mut results: HashMap<String, StageOutput> = HashMap::new();
    let mut inputs_of: HashMap<String, Vec<Bytes>> = HashMap::new();
    let started = Instant::now();
    for t in &query.tasks {
        let mut inputs = Vec::new();
        for (i, d) in t.deps.iter().enumerate() {
            let part = t.parts.get(i).copied().flatten();
            inputs.push(match (&results[d], part) {
                (StageOutput::Whole(b), None) => b.clone(),
                (StageOutput::Pieces(p), Some(k)) => p[k as usize].clone(),
                _ => panic!("wrong input kind"),
            });
        }
        let in_bytes: usize = inputs.iter().map(|b| b.len()).sum();
        inputs_of.insert(t.key.clone(), inputs.clone());
        let (e, payload) = (executor.clone(), t.payload.clone());
        let t0 = Instant::now();
        let out = tokio::task::spawn_blocking(move || e.run(&payload, inputs))
            .await
            .unwrap()
            .unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let (out_bytes, batches) = match &out {
            StageOutput::Whole(b) => (b.len(), ipc_batches(b)),
            StageOutput::Pieces(p) => (
                p.iter().map(|b| b.len()).sum(),
                p.iter().map(ipc_batches).sum(),
            ),
        };
        println!(
            "{:<8} {secs:>7.3}s  in {:>10} B  out {:>10} B in {batches} batches",
            t.key, in_bytes, out_bytes
        );
        results.insert(t.key.clone(), out);
    }
    println!("all tasks: {:.3}s", started.elapsed().as_secs_f64());
    if !args.iter().any(|a| a == "--metrics") {
        return;
    }
    // Each stage's first task again, drained without its output written, to read metrics.
    let mut seen = std::collections::HashSet::new();
    for t in &query.tasks {
        let task = StageTask::decode(&t.payload[..]).unwrap();
        if !seen.insert(task.stage) {
            continue;
        }
        let mut data: InputData = HashMap::new();
        for (slot, bytes) in task.slots.iter().zip(inputs_of[&t.key].clone()) {
            data.entry((slot.stage, slot.partition))
                .or_default()
                .push(bytes);
        }
        let codec = Codec {
            data: Arc::new(data),
        };
        let ctx = daskrs_engine::session::context(None, Default::default()).task_ctx();
        let plan = datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            &task.plan, &ctx, &codec,
        )
        .unwrap();
        let runs: Arc<dyn ExecutionPlan> = if task.pieces > 0 {
            plan.children()[0].clone()
        } else {
            plan
        };
        let mut s = runs.execute(task.partition as usize, ctx).unwrap();
        while let Some(b) = s.next().await {
            b.unwrap();
        }
        println!(
            "stage {} task {}:\n{}",
            task.stage,
            task.partition,
            DisplayableExecutionPlan::with_metrics(runs.as_ref()).indent(false)
        );
    }
}

fn ipc_batches(b: &Bytes) -> usize {
    if b.is_empty() {
        return 0;
    }
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(b.clone()), None)
        .unwrap()
        .count()
}
