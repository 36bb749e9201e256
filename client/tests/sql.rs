//! Distributed SQL on a scheduler and workers started as separate
//! processes, checked against single-node DataFusion on the same files.

mod harness;

use std::path::Path;
use std::process::Command;

use daskrs_client::Error;
use daskrs_engine::{compare, tpch};
use harness::s3::Minio;
use harness::{BIN, Cluster};

fn make_tpch(dir: &Path, scale: f64, files: usize) {
    let written = tpch::generate(dir, scale, files).unwrap();
    assert_eq!(written.len(), 2 + 6 * files);
    assert!(written.iter().all(|w| w.rows > 0), "{written:?}");
}

/// The answer to `sql`, row by row.
async fn rows(client: &daskrs_client::Client, sql: &str) -> Vec<String> {
    let answer = client
        .sql(sql, |_| {})
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    compare::rows(&answer.batches).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn all_22_tpch_queries_from_s3_match_single_node_datafusion() {
    let minio = Minio::start();
    let local = tempfile::tempdir().unwrap();
    let data = local.path().join("tpch");
    make_tpch(&data, 0.01, 3);
    minio.create_bucket("tpch").await;
    let uploaded = minio.upload_dir(&data, "tpch", "sf0.01").await;
    assert_eq!(uploaded, 20);

    let cluster = Cluster::start_with_env(3, &[], &[], &minio.env());
    let client = cluster.client(3).await;
    client
        .sql(&tpch::create_tables("s3://tpch/sf0.01"), |_| {})
        .await
        .unwrap();
    // The reference reads the same files from the local disk.
    let reference = compare::single_node_context(None);
    compare::run_sql(
        &reference,
        &tpch::create_tables(&data.display().to_string()),
    )
    .await
    .unwrap();

    let mut nonempty = 0;
    for q in 1..=22 {
        let sql = tpch::query(q).unwrap();
        let got = client
            .sql(sql, |_| {})
            .await
            .unwrap_or_else(|e| panic!("Q{q}: {e}"));
        let want = compare::run_sql(&reference, sql).await.unwrap();
        assert!(got.stages >= 2, "Q{q} ran in {} stage(s)", got.stages);
        let (g, w) = (
            compare::rows(&got.batches).unwrap(),
            compare::rows(&want).unwrap(),
        );
        assert_eq!(
            compare::sorted_rows(&got.batches).unwrap(),
            compare::sorted_rows(&want).unwrap(),
            "Q{q}: distributed and single-node answers differ"
        );
        // Every query orders its answer completely, so the order must match too.
        assert_eq!(g, w, "Q{q}: rows in another order");
        nonempty += usize::from(!g.is_empty());
    }
    assert!(nonempty >= 18, "only {nonempty} queries returned rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_errors_name_the_bucket_key_or_credentials() {
    let minio = Minio::start();
    let local = tempfile::tempdir().unwrap();
    make_tpch(&local.path().join("tpch"), 0.01, 1);
    minio.create_bucket("data").await;
    minio
        .upload_dir(&local.path().join("tpch/nation"), "data", "nation")
        .await;
    minio
        .upload_dir(&local.path().join("tpch/region"), "data", "region")
        .await;
    for part in [
        "year=2023/month=12",
        "year=2024/month=01",
        "year=2024/month=02",
    ] {
        minio
            .upload_dir(
                &local.path().join("tpch/nation"),
                "data",
                &format!("hive/{part}"),
            )
            .await;
    }
    for day in ["2023-12-31", "2024-01-01", "2024-01-02"] {
        minio
            .upload_dir(
                &local.path().join("tpch/nation"),
                "data",
                &format!("by-day/{day}"),
            )
            .await;
    }

    let cluster = Cluster::start_with_env(2, &[], &[], &minio.env());
    let client = cluster.client(2).await;
    let text = |e: Error| e.to_string();

    client
        .sql(
            "create external table nation stored as parquet location 's3://data/nation/'",
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "select count(*) from nation").await,
        vec!["25"]
    );
    // Globs in S3 paths, in FROM and in CREATE EXTERNAL TABLE.
    assert_eq!(
        rows(&client, "select count(*) from 's3://data/nation/*.parquet'").await,
        vec!["25"]
    );
    client
        .sql(
            "create external table nation_glob stored as parquet location 's3://data/nation/part-*.parquet'",
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "select count(*) from nation_glob").await,
        vec!["25"]
    );
    // Globs across directories: `*` within one, `**` at any depth.
    assert_eq!(
        rows(
            &client,
            "select count(*) from 's3://data/by-day/2024-*/*.parquet'"
        )
        .await,
        vec!["50"]
    );
    assert_eq!(
        rows(
            &client,
            "select count(*) from 's3://data/**/nation/part-*.parquet'"
        )
        .await,
        vec!["25"]
    );
    assert_eq!(
        rows(
            &client,
            "select count(*) from 's3://data/by-day/**/*.parquet'"
        )
        .await,
        vec!["75"]
    );
    client
        .sql(
            "create external table days stored as parquet location 's3://data/by-day/202?-*/part-*.parquet'",
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "select count(distinct n_name), count(*) from days").await,
        vec!["25|75"]
    );
    // The same name again: refused, kept, or replaced, as the statement says.
    let again = "create external table days stored as parquet location 's3://data/by-day/2024-01-0[12]/*.parquet'";
    let m = text(client.sql(again, |_| {}).await.unwrap_err());
    assert!(m.contains("table 'days' already exists"), "{m}");
    client
        .sql(
            &again.replace("table days", "table if not exists days"),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(rows(&client, "select count(*) from days").await, vec!["75"]);
    client
        .sql(
            &again.replace("create external", "create or replace external"),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(rows(&client, "select count(*) from days").await, vec!["50"]);
    // Hive partitions below a `**`: each file once, partition columns kept.
    assert_eq!(rows(&client, "select month, count(*) from 's3://data/hive/**/*.parquet' group by month order by month").await, vec!["01|25", "02|25", "12|25"]);
    // A glob that picks some partitions reads only those.
    assert_eq!(
        rows(
            &client,
            "select count(*) from 's3://data/hive/year=*/month=0[1]/*.parquet'"
        )
        .await,
        vec!["25"]
    );
    let m = text(
        client
            .sql("select * from 's3://data/by-day/2025-*/*.parquet'", |_| {})
            .await
            .unwrap_err(),
    );
    assert!(
        m.contains("no files match s3://data/by-day/2025-*/*.parquet"),
        "{m}"
    );

    let m = text(
        client
            .sql("select * from 's3://no-such-bucket/x.parquet'", |_| {})
            .await
            .unwrap_err(),
    );
    assert!(
        m.contains("no-such-bucket") || m.contains("NoSuchBucket"),
        "{m}"
    );
    let m = text(
        client
            .sql("select * from 's3://data/nation/missing.parquet'", |_| {})
            .await
            .unwrap_err(),
    );
    assert!(m.contains("missing.parquet"), "{m}");

    // An object removed after its table was created: the scan task fails
    // and says which object.
    client
        .sql(
            "create external table region stored as parquet location 's3://data/region/'",
            |_| {},
        )
        .await
        .unwrap();
    minio
        .client()
        .delete_object()
        .bucket("data")
        .key("region/part-001.parquet")
        .send()
        .await
        .unwrap();
    let m = text(
        client
            .sql("select * from region", |_| {})
            .await
            .unwrap_err(),
    );
    assert!(m.contains("region/part-001.parquet"), "{m}");

    // Wrong credentials: refused, and said so.
    let bad = Cluster::start_with_env(1, &[], &[], &minio.env_with_secret("not-the-secret"));
    let bad_client = bad.client(1).await;
    let m = text(
        bad_client
            .sql(
                "create external table nation stored as parquet location 's3://data/nation/'",
                |_| {},
            )
            .await
            .unwrap_err(),
    );
    assert!(
        m.contains("SignatureDoesNotMatch") || m.contains("403") || m.contains("Forbidden"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_aggregations_windows_and_paths_in_from() {
    let cluster = Cluster::start(2, &[], &[]);
    let data = cluster.dir.path().join("tpch");
    make_tpch(&data, 0.01, 2);
    let client = cluster.client(2).await;
    let reference = compare::single_node_context(None);
    let orders = format!("'{}/orders/'", data.display());
    let lineitem = format!("'{}/lineitem/*.parquet'", data.display());
    let queries = [
        // A path in FROM, with a glob.
        format!("select count(*), sum(l_quantity) from {lineitem}"),
        // A window function over a shuffle.
        format!(
            "select o_custkey, o_orderkey, rank() over (partition by o_custkey order by o_totalprice desc, o_orderkey) as r \
             from {orders} where o_custkey < 50 order by o_custkey, r"
        ),
        // Partitioned join of the two largest tables, then a sort and limit.
        format!(
            "select o.o_orderpriority, count(*) as n, sum(l.l_extendedprice) as total \
             from {orders} o join {lineitem} l on o.o_orderkey = l.l_orderkey \
             group by o.o_orderpriority order by o.o_orderpriority"
        ),
        // Distinct, union and a subquery in FROM.
        format!(
            "select k, count(*) from (select o_orderstatus as k from {orders} union all select l_linestatus as k from {lineitem}) t \
             group by k order by k"
        ),
        format!("select count(distinct o_custkey) from {orders}"),
        format!("select * from {orders} order by o_totalprice desc, o_orderkey limit 7"),
    ];
    for sql in &queries {
        let got = client
            .sql(sql, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let want = compare::run_sql(&reference, sql).await.unwrap();
        assert_eq!(
            compare::rows(&got.batches).unwrap(),
            compare::rows(&want).unwrap(),
            "{sql}"
        );
        assert!(got.rows() > 0, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sql_and_bad_files_are_clear_errors() {
    let cluster = Cluster::start(2, &[], &[]);
    let client = cluster.client(2).await;
    let dir = cluster.dir.path();

    let rejected = |e: Error| match e {
        Error::Rejected(m) => m,
        other => panic!("expected a rejection, got {other}"),
    };
    let m = rejected(client.sql("selec 1", |_| {}).await.unwrap_err());
    assert!(m.contains("SQL") && m.contains("selec"), "{m}");
    let m = rejected(
        client
            .sql("select nope from no_such_table", |_| {})
            .await
            .unwrap_err(),
    );
    assert!(m.contains("no_such_table"), "{m}");
    let m = rejected(client.sql("select 1; select 2", |_| {}).await.unwrap_err());
    assert!(m.contains("only the last statement"), "{m}");
    let missing = dir.join("missing");
    let m = rejected(
        client
            .sql(
                &format!("select * from '{}/x.parquet'", missing.display()),
                |_| {},
            )
            .await
            .unwrap_err(),
    );
    assert!(m.contains("missing"), "{m}");

    // A file that is not Parquet: planning or the scan task fails, and the
    // error names the file.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    make_tpch(&dir.join("good"), 0.01, 1);
    std::fs::copy(
        dir.join("good/nation/part-001.parquet"),
        bad.join("a.parquet"),
    )
    .unwrap();
    std::fs::write(
        bad.join("b.parquet"),
        b"PAR1 this is not parquet at all PAR1",
    )
    .unwrap();
    for sql in [
        format!("select count(*) from '{}/'", bad.display()),
        format!("select * from '{}/b.parquet'", bad.display()),
        format!(
            "create external table nation_bad stored as parquet location '{}/'",
            bad.display()
        ),
    ] {
        let e = client.sql(&sql, |_| {}).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Failed(_) | Error::Rejected(_)), "{text}");
        assert!(
            text.contains("b.parquet is not a valid Parquet file"),
            "{sql}: {text}"
        );
    }

    // The cluster still answers after all of that.
    let ok = client.sql("select 1 + 1 as two", |_| {}).await.unwrap();
    assert_eq!(compare::rows(&ok.batches).unwrap(), vec!["2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reads_and_writes_local_files_only_under_the_allowed_roots() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    let outside = dir.path().join("outside");
    make_tpch(&allowed, 0.01, 1);
    make_tpch(&outside, 0.01, 1);
    let roots = format!("--sql-local-roots={}", allowed.display());
    let cluster = Cluster::start(2, &[&roots], &[&roots]);
    let client = cluster.client(2).await;

    let inside = format!("select count(*) from '{}/nation/'", allowed.display());
    assert_eq!(rows(&client, &inside).await, vec!["25"]);
    let written = allowed.join("written");
    let copy_in = format!(
        "copy (select 1 as x) to '{}/' stored as parquet",
        written.display()
    );
    client
        .sql(&copy_in, |_| {})
        .await
        .expect("a COPY under the root");
    assert!(std::fs::read_dir(&written).unwrap().next().is_some());

    let refused = [
        "select * from '/proc/self/environ'".to_string(),
        "select * from '/var/run/secrets/kubernetes.io/serviceaccount/token'".to_string(),
        format!("select count(*) from '{}/nation/'", outside.display()),
        format!(
            "create external table t stored as parquet location '{}/nation/'",
            outside.display()
        ),
        format!(
            "copy (select 1 as x) to '{}/out/' stored as parquet",
            outside.display()
        ),
    ];
    for sql in &refused {
        let e = client.sql(sql, |_| {}).await.unwrap_err().to_string();
        assert!(e.contains("DASKRS_SQL_LOCAL_ROOTS"), "{sql}: {e}");
        assert!(e.contains(&allowed.display().to_string()), "{sql}: {e}");
    }
    assert!(!outside.join("out").exists());

    // `none`: no local file at all, not even under what the other allowed.
    let closed = Cluster::start(1, &["--sql-local-roots=none"], &["--sql-local-roots=none"]);
    let client = closed.client(1).await;
    let e = client.sql(&inside, |_| {}).await.unwrap_err().to_string();
    assert!(
        e.contains("no local files") && e.contains("DASKRS_SQL_LOCAL_ROOTS"),
        "{e}"
    );
    // Queries of no files still run.
    assert_eq!(rows(&client, "select 1 + 1").await, vec!["2"]);
}

#[test]
fn a_query_with_no_workers_attached_says_so() {
    let cluster = Cluster::start(0, &[], &[]);
    let out = cluster
        .command()
        .args(["sql", "--scheduler", &cluster.address(), "select 1 + 1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("no workers are attached") && !stderr.contains("lost"),
        "{stderr}"
    );
}

#[test]
fn sql_command_prints_saves_and_explains() {
    let cluster = Cluster::start(2, &[], &[]);
    let data = cluster.dir.path().join("tpch");
    make_tpch(&data, 0.01, 2);
    let sched = cluster.address();
    let run = |args: &[&str]| {
        cluster
            .command()
            .args(["sql", "--scheduler", &sched])
            .args(args)
            .env("DASKRS_LOG", "error")
            .output()
            .unwrap()
    };
    // Wait for both workers through `info`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = Command::new(BIN)
            .args(["info", "--scheduler", &sched, "--token-file"])
            .arg(cluster.token_file())
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).matches("w").count() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let tables = tpch::create_tables(&data.display().to_string());
    let out = run(&[&tables]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let q1 = tpch::query(1).unwrap();
    let out = run(&["--format", "csv", q1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("l_returnflag,l_linestatus,sum_qty"),
        "{csv}"
    );
    assert_eq!(lines.len(), 5, "{csv}");

    let out = run(&["--explain", q1]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Stage 0:") && text.contains("shuffled into"),
        "{text}"
    );
    assert!(text.contains("returned to the client"), "{text}");

    let file = cluster.dir.path().join("q1.parquet");
    let out = run(&["--output", file.to_str().unwrap(), q1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = cluster
        .command()
        .args(["sql", "--scheduler", &sched, "--format", "csv"])
        .arg(format!("select count(*) as n from '{}'", file.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "n\n4");

    let out = run(&["select * from nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_during_a_query_still_gives_the_right_answer() {
    let cluster = Cluster::start(3, &[], &[]);
    let data = cluster.dir.path().join("tpch");
    make_tpch(&data, 0.05, 3);
    let client = cluster.client(3).await;
    let tables = tpch::create_tables(&data.display().to_string());
    client.sql(&tables, |_| {}).await.unwrap();
    let reference = compare::single_node_context(None);
    compare::run_sql(&reference, &tables).await.unwrap();

    // Q9 joins six tables through several shuffles; kill a worker once the
    // first stages are done and the shuffle outputs are spread over the workers.
    let sql = tpch::query(9).unwrap();
    let pid = cluster.workers[1].pid().to_string();
    let mut killed_at = None;
    let got = client
        .sql(sql, |p| {
            if killed_at.is_none() && p.done > 0 && p.done < p.total {
                let ok = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
                assert!(ok.success());
                killed_at = Some((p.done, p.total));
            }
        })
        .await
        .unwrap();
    let (done, total) = killed_at.expect("the query ended before a worker could be killed");
    assert!(done < total);
    let want = compare::run_sql(&reference, sql).await.unwrap();
    assert_eq!(
        compare::rows(&got.batches).unwrap(),
        compare::rows(&want).unwrap(),
        "killed at {done}/{total}"
    );
    let info = client.info().await.unwrap();
    assert_eq!(info.workers.len(), 2, "the killed worker is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn results_larger_than_worker_memory_spill() {
    let cluster = Cluster::start(
        2,
        &[],
        &[
            "--memory-limit",
            "2MiB",
            "--pause-on-process-memory",
            "false",
        ],
    );
    let data = cluster.dir.path().join("tpch");
    make_tpch(&data, 0.01, 2);
    let client = cluster.client(2).await;
    let tables = tpch::create_tables(&data.display().to_string());
    client.sql(&tables, |_| {}).await.unwrap();
    let sql = "select l_orderkey, l_linenumber, l_comment, l_extendedprice from lineitem";
    let daskrs_client::sql::Plan::Query { graph, .. } = client.plan_sql(sql).await.unwrap() else {
        panic!("a query");
    };
    let keys = graph.outputs.clone();
    let finished = client.run(graph, |_| {}).await.unwrap();
    // Held results over the limit went to disk (heartbeats report it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let spilled = loop {
        let info = client.info().await.unwrap();
        let spilled: u64 = info.workers.iter().map(|w| w.spilled_bytes).sum();
        if spilled > 0 || std::time::Instant::now() > deadline {
            break spilled;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(spilled > 1 << 20, "spilled only {spilled} bytes");
    let mut rows = 0;
    for k in &keys {
        let out = client.gather(&finished, k).await.unwrap();
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(out.bytes), None)
                .unwrap();
        rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
    }
    let reference = compare::single_node_context(None);
    compare::run_sql(&reference, &tables).await.unwrap();
    let want = compare::run_sql(&reference, "select count(*) from lineitem")
        .await
        .unwrap();
    assert_eq!(compare::rows(&want).unwrap(), vec![rows.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn csv_and_json_tables() {
    let cluster = Cluster::start(2, &[], &[]);
    let dir = cluster.dir.path();
    make_tpch(&dir.join("tpch"), 0.01, 1);
    // Write CSV and newline-delimited JSON copies of orders with DataFusion.
    let local = compare::single_node_context(None);
    let setup = format!(
        "create external table orders stored as parquet location '{d}/tpch/orders/';\
         copy (select * from orders) to '{d}/orders_csv/' stored as csv options ('format.has_header' 'true');\
         copy (select * from orders) to '{d}/orders_json/' stored as json;         copy (select * from orders where o_orderstatus = 'F') to '{d}/by_day/2024-01-01/' stored as csv options ('format.has_header' 'true');         copy (select * from orders where o_orderstatus <> 'F') to '{d}/by_day/2024-01-02/' stored as csv options ('format.has_header' 'true');         copy (select * from orders) to '{d}/by_day/2023-12-31/' stored as csv options ('format.has_header' 'true')",
        d = dir.display()
    );
    compare::run_sql(&local, &setup).await.unwrap();

    let client = cluster.client(2).await;
    client
        .sql(
            &format!(
                "create external table orders_csv stored as csv location '{d}/orders_csv/' options ('format.has_header' 'true');\
                 create external table orders_json stored as json location '{d}/orders_json/';                 create external table orders_days stored as csv location '{d}/by_day/2024-*/*.csv' options ('format.has_header' 'true')",
                d = dir.display()
            ),
            |_| {},
        )
        .await
        .unwrap();
    let sql = |t: &str| {
        format!(
            "select o_orderstatus, count(*), sum(cast(o_totalprice as decimal(15, 2))), min(o_orderdate) \
             from {t} group by o_orderstatus order by o_orderstatus"
        )
    };
    let want = compare::run_sql(&local, &sql("orders")).await.unwrap();
    // A glob across directories in a local path, in FROM.
    let from_glob = format!("'{}/tpch/order*/*.parquet'", dir.display());
    for t in ["orders_csv", "orders_json", "orders_days", &from_glob] {
        let got = client.sql(&sql(t), |_| {}).await.unwrap();
        assert_eq!(
            compare::rows(&got.batches).unwrap(),
            compare::rows(&want).unwrap(),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_to_s3_and_local_files_and_nothing_visible_on_failure() {
    let minio = Minio::start();
    minio.create_bucket("out").await;
    let cluster = Cluster::start_with_env(2, &[], &[], &minio.env());
    let dir = cluster.dir.path();
    let data = dir.join("tpch");
    make_tpch(&data, 0.01, 2);
    let client = cluster.client(2).await;
    let tables = tpch::create_tables(&data.display().to_string());
    client.sql(&tables, |_| {}).await.unwrap();
    let reference = compare::single_node_context(None);
    compare::run_sql(&reference, &tables).await.unwrap();
    let check =
        "select count(*), sum(o_totalprice), max(o_comment) from orders where o_orderstatus = 'F'";
    let want = compare::run_sql(&reference, check).await.unwrap();
    let query = "select * from orders where o_orderstatus = 'F'";

    // To S3: one object per partition, written by the workers.
    let done = client
        .sql(
            &format!("copy ({query}) to 's3://out/orders/' stored as parquet"),
            |_| {},
        )
        .await
        .unwrap();
    let counts = compare::rows(&done.batches).unwrap();
    let keys = minio.list("out", "orders/").await;
    assert!(keys.len() >= 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.ends_with(".parquet")), "{keys:?}");
    assert_eq!(counts[0].split('|').next().unwrap(), keys.len().to_string());
    client
        .sql(
            "create external table written stored as parquet location 's3://out/orders/'",
            |_| {},
        )
        .await
        .unwrap();
    let back = client
        .sql(
            &check.replace("from orders where o_orderstatus = 'F'", "from written"),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        compare::rows(&back.batches).unwrap(),
        compare::rows(&want).unwrap()
    );

    // To a local directory, as CSV.
    let out = dir.join("csv_out");
    client
        .sql(
            &format!("copy ({query}) to '{}/' stored as csv", out.display()),
            |_| {},
        )
        .await
        .unwrap();
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("part-") && f.ends_with(".csv")),
        "{files:?}"
    );
    client
        .sql(
            &format!(
                "create external table written_csv stored as csv location '{}/' options ('format.has_header' 'true')",
                out.display()
            ),
            |_| {},
        )
        .await
        .unwrap();
    let back = client
        .sql("select count(*), max(o_comment) from written_csv", |_| {})
        .await
        .unwrap();
    let want_csv = compare::run_sql(
        &reference,
        "select count(*), max(o_comment) from orders where o_orderstatus = 'F'",
    )
    .await
    .unwrap();
    assert_eq!(
        compare::rows(&back.batches).unwrap(),
        compare::rows(&want_csv).unwrap()
    );

    // A query that fails part-way: no object and no file becomes visible.
    let failing = "select o_orderkey / (o_custkey - o_custkey) as boom from orders";
    copy_fails(&client, failing, "'s3://out/bad/' stored as parquet").await;
    assert!(minio.list("out", "bad/").await.is_empty());
    let bad = dir.join("bad_out");
    copy_fails(
        &client,
        failing,
        &format!("'{}/' stored as parquet", bad.display()),
    )
    .await;
    // The error comes back as soon as one task fails; its siblings fail on
    // their own a moment later and remove their temporary files then.
    left_behind(&bad, None).await;

    // Only one partition fails: the writers of the others finish, and what
    // they wrote is let go of when the query fails, on S3 and on disk.
    let one_fails =
        "select o_orderkey / (case when o_orderkey = 1 then 0 else 1 end) as boom from orders";
    copy_fails(&client, one_fails, "'s3://out/partly/' stored as parquet").await;
    assert!(minio.list("out", "partly/").await.is_empty());
    let partly = dir.join("partly_out");
    copy_fails(
        &client,
        one_fails,
        &format!("'{}/' stored as csv", partly.display()),
    )
    .await;
    left_behind(&partly, Some((&minio, "out", "partly"))).await;
}

/// `COPY (query) TO target` fails, saying it divided by zero.
async fn copy_fails(client: &daskrs_client::Client, query: &str, target: &str) {
    let e = client
        .sql(&format!("copy ({query}) to {target}"), |_| {})
        .await
        .unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("divide by zero"),
        "{e}"
    );
}

/// Waits until nothing is left in `dir` and, when given, no multipart upload
/// of `prefix/part-NNNNN.parquet` is in progress in the bucket.
async fn left_behind(dir: &Path, s3: Option<(&Minio, &str, &str)>) {
    let last = std::sync::Mutex::new(String::new());
    let diagnose = || format!("left behind: {}", last.lock().unwrap());
    harness::kube::wait_for(
        "a failed COPY to leave nothing behind",
        std::time::Duration::from_secs(20),
        &diagnose,
        || async {
            let mut uploads = 0;
            if let Some((minio, bucket, prefix)) = s3 {
                for p in 0..64 {
                    uploads += minio
                        .uploads_in_progress(bucket, &format!("{prefix}/part-{p:05}.parquet"))
                        .await;
                }
            }
            let files: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            *last.lock().unwrap() = format!("{uploads} incomplete uploads, files {files:?}");
            (uploads == 0 && files.is_empty()).then_some(())
        },
    )
    .await;
}
