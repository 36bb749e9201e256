//! Stage graphs run in this process, task by task, as workers would run
//! them: each task gets exactly the pieces its payload names.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use daskrs_engine::{Executor, Planned, Planner, StageOutput, compare, tpch};

/// Runs every task of a planned query in order and returns the answer.
async fn run_in_process(
    planner: &Planner,
    sql: &str,
    threads: usize,
) -> Vec<arrow::record_batch::RecordBatch> {
    let Planned::Query(q) = planner.plan(sql, threads).await.unwrap() else {
        panic!("{sql} is not a query");
    };
    let executor = Arc::new(Executor::new(None));
    let mut results: HashMap<String, StageOutput> = HashMap::new();
    for t in &q.tasks {
        let mut inputs = Vec::new();
        for (i, d) in t.deps.iter().enumerate() {
            let part = t.parts.get(i).copied().flatten();
            let bytes: Bytes = match (&results[d], part) {
                (StageOutput::Whole(b), None) => b.clone(),
                (StageOutput::Pieces(p), Some(k)) => p[k as usize].clone(),
                (_, part) => panic!("{} asks {d} for piece {part:?} of the wrong kind", t.key),
            };
            inputs.push(bytes);
        }
        let (e, payload) = (executor.clone(), t.payload.clone());
        let out = tokio::task::spawn_blocking(move || e.run(&payload, inputs))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e}", t.key));
        results.insert(t.key.clone(), out);
    }
    let mut batches = Vec::new();
    for key in &q.outputs {
        let StageOutput::Whole(b) = &results[key] else {
            panic!("output {key} is in pieces")
        };
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(b.clone()), None)
                .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    batches
}

#[tokio::test(flavor = "multi_thread")]
async fn staged_tpch_matches_single_node() {
    let dir = tempfile::tempdir().unwrap();
    tpch::generate(dir.path(), 0.01, 2).unwrap();
    let tables = tpch::create_tables(&dir.path().display().to_string());
    let planner = Planner::new(None);
    assert!(matches!(
        planner.plan(&tables, 2).await.unwrap(),
        Planned::Local(_)
    ));
    let reference = compare::single_node_context(None);
    compare::run_sql(&reference, &tables).await.unwrap();

    let count = "select count(*), sum(l_quantity) from lineitem";
    let got = run_in_process(&planner, count, 3).await;
    let want = compare::run_sql(&reference, count).await.unwrap();
    assert_eq!(compare::rows(&got).unwrap(), compare::rows(&want).unwrap());

    for q in 1..=22 {
        let sql = tpch::query(q).unwrap();
        for threads in [1, 3] {
            let got = run_in_process(&planner, sql, threads).await;
            let want = compare::run_sql(&reference, sql).await.unwrap();
            assert_eq!(
                compare::rows(&got).unwrap(),
                compare::rows(&want).unwrap(),
                "Q{q} with {threads} threads"
            );
        }
    }
}
