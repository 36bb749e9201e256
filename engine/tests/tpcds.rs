//! All 99 TPC-DS queries, planned into stages and run task by task as two
//! workers would run them, answer exactly as single-node DataFusion does on
//! the same files. The data (scale factor 0.01) and the queries come from
//! DuckDB's tpcds extension, made once by `scripts/tpcds-data.sh`, which
//! the test command runs first.

mod support;

use std::path::PathBuf;

use daskrs_engine::{compare, tpcds};

fn data() -> PathBuf {
    let dir = std::env::var_os("DASKRS_TPCDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tpcds::default_dir("0.01"));
    assert!(
        tpcds::is_complete(&dir),
        "no TPC-DS data in {}: run scripts/tpcds-data.sh",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tpcds_query_answers_as_single_node() {
    let dir = data();
    let tables = tpcds::create_tables(&dir.display().to_string());
    let (planner, reference) = support::planner_and_reference(&tables).await;

    let mut failed = Vec::new();
    for q in 1..=99 {
        let sql = tpcds::query(&dir, q).unwrap_or_else(|e| panic!("query {q}: {e}"));
        let want = match compare::run_sql(&reference, &sql).await {
            Ok(w) => compare::rows(&w).unwrap(),
            Err(e) => {
                failed.push(format!("Q{q}: single-node DataFusion fails: {e}"));
                continue;
            }
        };
        let got = support::try_run_in_process(&planner, &sql, 2).await;
        match got.map(|g| compare::rows(&g).unwrap()) {
            Ok(got) if got == want => {}
            Ok(got) => failed.push(format!(
                "Q{q}: {} rows where single-node DataFusion has {}; first differing: {:?}",
                got.len(),
                want.len(),
                got.iter().zip(&want).find(|(a, b)| a != b)
            )),
            Err(e) => failed.push(format!("Q{q}: {}", e.lines().next().unwrap_or(""))),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 99 queries:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
