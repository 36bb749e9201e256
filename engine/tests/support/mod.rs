//! Planned queries run in this process, task by task, as workers would
//! run them: each task gets exactly the pieces its payload names.

#![allow(dead_code)] // each test binary uses a part

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use daskrs_engine::{Executor, Planned, Planner, StageOutput, compare};
use datafusion::prelude::SessionContext;

/// A planner and a single-node DataFusion context that both know the
/// tables `ddl` creates.
pub async fn planner_and_reference(ddl: &str) -> (Planner, SessionContext) {
    let planner = Planner::new(None);
    assert!(matches!(
        planner.plan(ddl, 2).await.unwrap(),
        Planned::Local(_)
    ));
    let reference = compare::single_node_context(None);
    compare::run_sql(&reference, ddl).await.unwrap();
    (planner, reference)
}

/// TPC-H at scale factor 0.01 in two files a table, made in a temporary
/// directory (kept as long as the first value lives), and
/// [`planner_and_reference`] over it.
pub async fn small_tpch() -> (tempfile::TempDir, Planner, SessionContext) {
    let dir = tempfile::tempdir().unwrap();
    daskrs_engine::tpch::generate(dir.path(), 0.01, 2).unwrap();
    let tables = daskrs_engine::tpch::create_tables(&dir.path().display().to_string());
    let (planner, reference) = planner_and_reference(&tables).await;
    (dir, planner, reference)
}

/// Asserts that `sql` run in stages with `threads` threads answers with
/// the rows single-node DataFusion answers with, in the same order.
pub async fn assert_same_answer(
    planner: &Planner,
    reference: &SessionContext,
    sql: &str,
    threads: usize,
    what: &str,
) {
    let got = run_in_process(planner, sql, threads).await;
    let want = compare::run_sql(reference, sql).await.unwrap();
    assert_eq!(
        compare::rows(&got).unwrap(),
        compare::rows(&want).unwrap(),
        "{what} with {threads} threads"
    );
}

/// Runs every task of a planned query in order and returns the answer.
pub async fn run_in_process(
    planner: &Planner,
    sql: &str,
    threads: usize,
) -> Vec<arrow::record_batch::RecordBatch> {
    try_run_in_process(planner, sql, threads)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_in_process`], saying what failed instead of panicking.
pub async fn try_run_in_process(
    planner: &Planner,
    sql: &str,
    threads: usize,
) -> Result<Vec<arrow::record_batch::RecordBatch>, String> {
    match planner.plan(sql, threads).await {
        // Running whole answers right, but the plan should have been cut.
        Ok(Planned::Query(q)) if q.whole.is_some() => Err(format!(
            "not cut into stages: {}",
            q.whole.unwrap_or_default()
        )),
        Ok(Planned::Query(q)) => try_run_query(q, HashMap::new()).await,
        Ok(Planned::Local(_)) => Err("planned to run on the scheduler".into()),
        Err(e) => Err(format!("not planned: {e}")),
    }
}

/// Runs a planned query's tasks in order; `held` are results the query
/// reads that it does not make (its input tables).
pub async fn run_query(
    q: daskrs_engine::Query,
    held: HashMap<String, Bytes>,
) -> Vec<arrow::record_batch::RecordBatch> {
    try_run_query(q, held)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_query`], saying what failed instead of panicking.
pub async fn try_run_query(
    q: daskrs_engine::Query,
    held: HashMap<String, Bytes>,
) -> Result<Vec<arrow::record_batch::RecordBatch>, String> {
    let executor = Arc::new(Executor::new(None));
    let mut results: HashMap<String, StageOutput> = held
        .into_iter()
        .map(|(k, b)| (k, StageOutput::Whole(b)))
        .collect();
    for t in &q.tasks {
        let mut inputs = Vec::new();
        for (i, d) in t.deps.iter().enumerate() {
            let part = t.parts.get(i).copied().flatten();
            let bytes: Bytes = match (&results[d], part) {
                (StageOutput::Whole(b), None) => b.clone(),
                (StageOutput::Pieces(p), Some(k)) => p[k as usize].clone(),
                (_, part) => {
                    return Err(format!(
                        "{} asks {d} for piece {part:?} of the wrong kind",
                        t.key
                    ));
                }
            };
            inputs.push(bytes);
        }
        // Every task runs its partition alone, as dynamic filters need.
        if executor
            .runs_narrowed(&t.payload)
            .map_err(|e| e.to_string())?
            == Some(false)
        {
            return Err(format!("{} runs more than its own partition", t.key));
        }
        let (e, payload) = (executor.clone(), t.payload.clone());
        let out = tokio::task::spawn_blocking(move || e.run(&payload, inputs))
            .await
            .map_err(|e| format!("{}: {e}", t.key))?
            .map_err(|e| format!("{}: {e}", t.key))?;
        results.insert(t.key.clone(), out);
    }
    let mut batches = Vec::new();
    for key in &q.outputs {
        let StageOutput::Whole(b) = &results[key] else {
            return Err(format!("output {key} is in pieces"));
        };
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(b.clone()), None)
                .map_err(|e| e.to_string())?;
        for b in reader {
            batches.push(b.map_err(|e| e.to_string())?);
        }
    }
    Ok(batches)
}
