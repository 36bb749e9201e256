//! Stage graphs run in this process, task by task, as workers would run
//! them: each task gets exactly the pieces its payload names.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use daskrs_engine::{Planned, Planner, compare, tpch};
use support::{assert_same_answer, run_query, small_tpch};

#[tokio::test(flavor = "multi_thread")]
async fn staged_tpch_matches_single_node() {
    let (_dir, planner, reference) = small_tpch().await;
    let count = "select count(*), sum(l_quantity) from lineitem";
    assert_same_answer(&planner, &reference, count, 3, count).await;
    for q in 1..=22 {
        let sql = tpch::query(q).unwrap();
        for threads in [1, 3] {
            assert_same_answer(&planner, &reference, sql, threads, &format!("Q{q}")).await;
        }
    }
}

/// Plans whose operators rely on how their input is laid out: a union of
/// inputs hash partitioned alike (DataFusion interleaves them rather than
/// appending), and window functions over partitions that need their input
/// sorted. Cut into stages, they answer as single-node DataFusion does.
#[tokio::test(flavor = "multi_thread")]
async fn unions_and_windows_cut_into_stages_answer_as_single_node() {
    let (_dir, planner, reference) = small_tpch().await;
    let queries = [
        // Two aggregations by the same key, appended, aggregated again.
        "select k, sum(v) as v, count(*) as n from ( \
           select l_orderkey % 7 as k, sum(l_quantity) as v from lineitem group by 1 \
           union all \
           select o_orderkey % 7 as k, sum(o_totalprice) as v from orders group by 1) \
         group by k order by k",
        "select k from (select l_suppkey as k from lineitem union all select s_suppkey from supplier) \
         group by k order by k limit 20",
        // A window over partitions, on an aggregate, as TPC-DS 47 and 57 do.
        "select s_nationkey, s_suppkey, total, \
                rank() over (partition by s_nationkey order by total desc, s_suppkey) as r, \
                avg(total) over (partition by s_nationkey) as mean \
         from (select s_nationkey, s_suppkey, sum(l_extendedprice) as total \
               from lineitem join supplier on l_suppkey = s_suppkey group by 1, 2) \
         order by s_nationkey, r, s_suppkey limit 50",
        // A window partitioned by a column a filter below the exchange fixed
        // to one value, as in TPC-DS 47: sorted by the others only.
        "select k, y, m, total, mean, r from ( \
           select k, y, m, sum(v) as total, \
                  avg(sum(v)) over (partition by k, y) as mean, \
                  rank() over (partition by k order by y, m) as r \
           from (select o_custkey % 5 as k, extract(year from o_orderdate) as y, \
                        extract(month from o_orderdate) as m, o_totalprice as v from orders) \
           group by k, y, m) \
         where y = 1995 order by k, m",
        // A window over the whole input, and one ordered by what a merge sorted.
        "select o_orderkey, sum(o_totalprice) over (order by o_orderkey rows between 2 preceding and current row) as s \
         from orders order by o_orderkey limit 30",
        "select c_nationkey, c_custkey, \
                lag(c_acctbal) over (partition by c_nationkey order by c_custkey) as prev \
         from customer order by c_nationkey, c_custkey limit 40",
    ];
    for sql in queries {
        for threads in [1, 3] {
            assert_same_answer(&planner, &reference, sql, threads, sql).await;
        }
    }
}

/// A common table expression named twice is computed once: both readers
/// read the same stage. One that calls `random()` is computed for each.
#[tokio::test(flavor = "multi_thread")]
async fn a_subplan_named_twice_runs_once_unless_it_is_random() {
    let (_dir, planner, reference) = small_tpch().await;
    let cte = |keep: &str| {
        format!(
            "with t as (select l_suppkey as k, sum(l_quantity) as q \
                        from lineitem where {keep} group by l_suppkey) \
             select a.k, a.q, b.q from t a join t b on a.k = b.k + 1 order by a.k"
        )
    };
    let stages = |q: &daskrs_engine::Query| {
        q.explain
            .lines()
            .filter(|l| l.starts_with("Stage "))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            .collect::<Vec<_>>()
    };
    let shared = cte("l_quantity > 10");
    let Planned::Query(q) = planner.plan(&shared, 2).await.unwrap() else {
        panic!("a query")
    };
    let listed = stages(&q);
    let scans = listed.iter().filter(|s| s.contains("reads files")).count();
    assert_eq!(scans, 1, "lineitem is read by one stage:\n{}", q.explain);
    assert_same_answer(&planner, &reference, &shared, 2, "shared").await;
    assert_same_answer(&planner, &reference, &shared, 3, "shared").await;

    let Planned::Query(q) = planner.plan(&cte("random() < 2"), 2).await.unwrap() else {
        panic!("a query")
    };
    let scans = stages(&q)
        .iter()
        .filter(|s| s.contains("reads files"))
        .count();
    assert_eq!(
        scans, 2,
        "each reference runs random() anew:\n{}",
        q.explain
    );
}

/// A semi or anti join reads one side only for its keys: that side's
/// tasks send each key once, and the answers stay single-node DataFusion's.
#[tokio::test(flavor = "multi_thread")]
async fn a_side_read_only_for_its_keys_sends_each_key_once() {
    let (_dir, planner, reference) = small_tpch().await;
    let keys_sent_distinct = [
        "select count(*), sum(p_size) from part where p_partkey in (select l_partkey from lineitem)",
        "select count(*), sum(p_size) from part \
         where not exists (select 1 from lineitem where l_partkey = p_partkey and l_quantity > 0)",
        "select o_orderpriority, count(*) from orders where exists \
           (select 1 from lineitem where l_orderkey = o_orderkey and l_commitdate < l_receiptdate) \
         group by 1 order by 1",
    ];
    for sql in keys_sent_distinct {
        let Planned::Query(q) = planner.plan(sql, 3).await.unwrap() else {
            panic!("a query")
        };
        let lineitem_stage = q
            .explain
            .split("Stage ")
            .find(|s| s.contains("projection=[l_"))
            .unwrap_or_else(|| panic!("a stage reads lineitem:\n{}", q.explain));
        assert!(
            lineitem_stage.contains("AggregateExec: mode=Partial")
                && lineitem_stage.contains("aggr=[]"),
            "lineitem's tasks send distinct keys:\n{}",
            q.explain
        );
        for threads in [1, 3] {
            assert_same_answer(&planner, &reference, sql, threads, sql).await;
        }
    }
    // A side that carries a column besides its keys (here for the join's
    // filter) is needed row by row: nothing changes.
    let filtered = "select count(*) from part where exists \
        (select 1 from lineitem where l_partkey = p_partkey and l_quantity > p_size)";
    let Planned::Query(q) = planner.plan(filtered, 3).await.unwrap() else {
        panic!("a query")
    };
    assert!(!q.explain.contains("aggr=[]"), "{}", q.explain);
    assert_same_answer(&planner, &reference, filtered, 3, filtered).await;
}

/// Input tables: results a session holds, named by the query, read by the
/// tasks that scan them as one more input; seen by that request only.
#[tokio::test(flavor = "multi_thread")]
async fn input_tables_are_read_from_their_keys_and_answer_in_one_output() {
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Float64, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let batch = |lo: i64, hi: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (lo..hi).map(|i| ["a", "b", "c"][(i % 3) as usize]),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (lo..hi).map(|i| i as f64 * 0.5),
                )),
                Arc::new(Int64Array::from_iter_values(lo..hi)),
            ],
        )
        .unwrap()
    };
    let batches = vec![batch(0, 500), batch(500, 1200)];
    let ipc = daskrs_engine::stage::ipc_bytes(schema.clone(), &batches).unwrap();
    let empty = daskrs_engine::stage::ipc_bytes(schema.clone(), &[]).unwrap();
    let table = daskrs_engine::InputTable::from_ipc("t", "python-key-1", &empty).unwrap();

    let reference = compare::single_node_context(None);
    let mem = datafusion::datasource::MemTable::try_new(schema.clone(), vec![batches]).unwrap();
    reference.register_table("t", Arc::new(mem)).unwrap();

    let planner = Planner::new(None);
    for sql in [
        "SELECT k, SUM(v) AS v, COUNT(*) AS rows FROM t WHERE n % 7 <> 3 GROUP BY k ORDER BY k",
        "SELECT a.k, COUNT(*) AS pairs FROM t a JOIN t b ON a.n = b.n + 1 GROUP BY a.k ORDER BY a.k",
        "SELECT COUNT(*) AS rows FROM t",
        "SELECT n FROM t WHERE v > 100 ORDER BY n DESC LIMIT 5",
    ] {
        let Planned::Query(q) = planner
            .plan_with(sql, 3, std::slice::from_ref(&table), true)
            .await
            .unwrap()
        else {
            panic!("{sql} is not a query");
        };
        assert_eq!(q.outputs.len(), 1, "{sql}: {:?}", q.outputs);
        assert!(
            q.tasks
                .iter()
                .any(|t| t.deps.contains(&"python-key-1".to_string())),
            "{sql}: no task reads the table's key"
        );
        assert!(
            q.explain.contains("table t (key python-key-1)"),
            "{}",
            q.explain
        );
        let held = HashMap::from([("python-key-1".to_string(), ipc.clone())]);
        let got = run_query(q, held).await;
        let want = compare::run_sql(&reference, sql).await.unwrap();
        assert_eq!(
            compare::rows(&got).unwrap(),
            compare::rows(&want).unwrap(),
            "{sql}"
        );
    }

    // The table was the request's own: the catalog does not know it.
    let err = planner.plan("SELECT * FROM t", 3).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let bad = daskrs_engine::InputTable::from_ipc("t", "k", b"not arrow").unwrap_err();
    assert!(bad.to_string().contains("table 't'"), "{bad}");
}
