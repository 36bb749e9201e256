//! `daskrs demo`: TPC-H sample data made here, a local cluster, and a few
//! TPC-H queries run on it, each checked against single-node DataFusion.

use std::time::{Duration, Instant};

use daskrs_client::Client;
use daskrs_client::local::{LocalCluster, LocalConfig};
use daskrs_engine::{compare, tpch};

use super::{DemoArgs, Failure, system_memory};

pub async fn demo(a: DemoArgs) -> Result<(), Failure> {
    if a.workers == 0 || a.threads_per_worker == 0 {
        return Err(Failure::new(
            2,
            "--workers and --threads-per-worker must be at least 1",
        ));
    }
    if a.scale.is_nan() || a.scale <= 0.0 || a.scale > 10.0 {
        return Err(Failure::new(
            2,
            format!("--scale must be in (0, 10], got {}", a.scale),
        ));
    }
    let queries: Vec<usize> = a.queries.clone();
    if let Some(q) = queries.iter().find(|q| tpch::query(**q).is_none()) {
        return Err(Failure::new(
            2,
            format!("--queries: there is no TPC-H query {q}; they are 1 to 22"),
        ));
    }
    let dir = tempfile::tempdir()
        .map_err(|e| Failure::new(3, format!("cannot make a temporary directory: {e}")))?;
    let data = match &a.data_dir {
        Some(d) => d.clone(),
        None => dir.path().join("tpch"),
    };
    let files = (a.workers * a.threads_per_worker) as usize;
    let t = Instant::now();
    let scale = a.scale;
    let written = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || tpch::generate(&data, scale, files))
            .await
            .map_err(|e| Failure::new(4, e.to_string()))?
            .map_err(|e| Failure::new(4, e))?
    };
    let rows: u64 = written.iter().map(|w| w.rows).sum();
    let bytes: u64 = written.iter().map(|w| w.bytes).sum();
    println!(
        "TPC-H scale factor {scale}: {rows} rows in {} Parquet files ({:.1} MB), made in {:.2}s",
        written.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // As on Kubernetes: TLS with certificates of the cluster's own authority.
    let tls = demo_tls(&dir.path().join("tls"))?;
    let cluster = LocalCluster::start(LocalConfig {
        workers: a.workers,
        threads_per_worker: a.threads_per_worker,
        memory_limit: system_memory() / u64::from(a.workers) / 2,
        listen: ([127, 0, 0, 1], 0).into(),
        http_listen: None,
        local_dir: dir.path().to_path_buf(),
        s3: Default::default(),
        token: Some(daskrs_proto::auth::Token::generate()),
        tls: Some(tls.clone()),
    })
    .await
    .map_err(|e| Failure::new(3, e.to_string()))?;
    let result = run_queries(&cluster, &a, &data, &queries).await;
    cluster.shutdown().await;
    result
}

async fn run_queries(
    cluster: &LocalCluster,
    a: &DemoArgs,
    data: &std::path::Path,
    queries: &[usize],
) -> Result<(), Failure> {
    let client = Client::connect_with(
        &cluster.address(),
        cluster.token.as_ref(),
        cluster.tls.as_ref(),
    )
    .await?;
    client
        .wait_for_workers(a.workers as usize, Duration::from_secs(10))
        .await?;
    println!(
        "local cluster: {} workers x {} threads at {}",
        a.workers,
        a.threads_per_worker,
        cluster.address()
    );
    let tables = tpch::create_tables(&data.display().to_string());
    client.sql(&tables, |_| {}).await?;
    let reference = compare::single_node_context(None);
    compare::run_sql(&reference, &tables)
        .await
        .map_err(|e| Failure::new(4, e))?;

    let mut timings = Vec::new();
    for &q in queries {
        let sql = tpch::query(q).expect("checked above");
        let t = Instant::now();
        let answer = client.sql(sql, |_| {}).await?;
        let took = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let want = compare::run_sql(&reference, sql)
            .await
            .map_err(|e| Failure::new(4, format!("Q{q} on single-node DataFusion: {e}")))?;
        let single = t.elapsed().as_secs_f64();
        let got_rows = compare::sorted_rows(&answer.batches).map_err(|e| Failure::new(4, e))?;
        let want_rows = compare::sorted_rows(&want).map_err(|e| Failure::new(4, e))?;
        let same = got_rows == want_rows;
        println!(
            "\nQ{q}: {} rows in {took:.3}s ({} stages, {} tasks)",
            answer.rows(),
            answer.stages,
            answer.tasks
        );
        let shown: Vec<_> = first_rows(&answer.batches, 10);
        match arrow::util::pretty::pretty_format_batches(&shown) {
            Ok(t) => println!("{t}"),
            Err(e) => println!("(cannot print: {e})"),
        }
        if answer.rows() > 10 {
            println!("... {} more rows", answer.rows() - 10);
        }
        if !same {
            return Err(Failure::new(
                1,
                format!(
                    "Q{q}: the cluster's answer differs from single-node DataFusion's: {}",
                    first_difference(&got_rows, &want_rows)
                ),
            ));
        }
        timings.push((q, took, single, answer.rows()));
    }
    println!(
        "\n{:<6}{:>12}{:>18}{:>8}   same answer",
        "query", "daskrs s", "single-node s", "rows"
    );
    for (q, took, single, rows) in &timings {
        println!("Q{q:<5}{took:>12.3}{single:>18.3}{rows:>8}   yes");
    }
    Ok(())
}

fn first_difference(got: &[String], want: &[String]) -> String {
    if got.len() != want.len() {
        return format!("{} rows instead of {}", got.len(), want.len());
    }
    got.iter()
        .zip(want)
        .find(|(g, w)| g != w)
        .map(|(g, w)| format!("row {g:?} where single-node has {w:?}"))
        .unwrap_or_default()
}

fn first_rows(
    batches: &[arrow::record_batch::RecordBatch],
    n: usize,
) -> Vec<arrow::record_batch::RecordBatch> {
    let mut left = n;
    let mut out = Vec::new();
    for b in batches {
        if left == 0 {
            break;
        }
        let take = b.num_rows().min(left);
        out.push(b.slice(0, take));
        left -= take;
    }
    out
}

/// Certificates of a new authority for the demo's cluster, in `dir`.
fn demo_tls(dir: &std::path::Path) -> Result<daskrs_proto::tls::Tls, Failure> {
    let ca = daskrs_core::certs::Authority::generate("demo")
        .map_err(|e| Failure::new(3, e.to_string()))?;
    let issued = ca
        .issue("demo", &[], 1)
        .map_err(|e| Failure::new(3, e.to_string()))?;
    super::certs::write_member(dir, &ca, &issued)?;
    daskrs_proto::tls::Tls::load(dir).map_err(|e| Failure::new(3, e.to_string()))
}
