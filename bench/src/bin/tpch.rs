//! TPC-H on a daskrs cluster (a scheduler and two worker processes of the
//! release `daskrs` binary on loopback) next to single-node DataFusion on the
//! same files in the same run, and, when given its figures, Dask DataFrame.
//!
//! Every answer is checked against single-node DataFusion's before its time
//! counts.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use daskrs_bench::{Cluster, Common};
use daskrs_client::Client;
use daskrs_engine::{compare, tpch};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Where the data is made (once) and kept; default ~/.cache/daskrs/tpch/sf<scale>.
    #[arg(long)]
    data: Option<PathBuf>,
    /// JSON printed by bench/dask_tpch.py: {"q1": seconds, ...}.
    #[arg(long)]
    dask_json: Option<PathBuf>,
    /// Read the tables from here instead (e.g. s3://tpch/sf1, the same files
    /// uploaded); S3 settings come from the environment (DASKRS_S3_ENDPOINT,
    /// AWS_ACCESS_KEY_ID, ...), for the cluster and the single-node side alike.
    #[arg(long)]
    location: Option<String>,
    /// Also run every query on a second cluster with a token and TLS (as
    /// on Kubernetes by default), in turns with the first, and print what
    /// they cost.
    #[arg(long)]
    secured: bool,
}

/// Bytes of lineitem per second: a query that reads every column of every
/// row group, next to plain parallel GETs of the same objects.
async fn scan_throughput(
    client: &Client,
    single: &datafusion::prelude::SessionContext,
    s3: &daskrs_engine::S3Access,
    location: &str,
    local: &std::path::Path,
) {
    use futures::StreamExt;
    let rest = location.trim_start_matches("s3://");
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let store = s3.store(bucket).expect("a store for the bucket");
    let prefix =
        object_store::path::Path::from(format!("{}/lineitem", prefix.trim_end_matches('/')));
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .map(|o| o.expect("listing works"))
        .collect()
        .await;
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let t = Instant::now();
    let got: u64 = futures::stream::iter(objects.iter().map(|o| {
        let store = store.clone();
        let (path, size) = (o.location.clone(), o.size);
        async move {
            // Ranged GETs of 8 MiB, 16 objects at a time.
            let ranges: Vec<std::ops::Range<u64>> = (0..size)
                .step_by(8 << 20)
                .map(|s| s..(s + (8 << 20)).min(size))
                .collect();
            let parts = store.get_ranges(&path, &ranges).await.expect("ranged GETs");
            parts.iter().map(|b| b.len() as u64).sum::<u64>()
        }
    }))
    .buffer_unordered(16)
    .fold(0, |a, b| async move { a + b })
    .await;
    let get_s = t.elapsed().as_secs_f64();
    assert_eq!(got, total);
    let sql = "select count(*), sum(l_orderkey), sum(l_partkey), sum(l_suppkey), sum(l_linenumber), \
               sum(l_quantity), sum(l_extendedprice), sum(l_discount), sum(l_tax), max(l_returnflag), \
               max(l_linestatus), max(l_shipdate), max(l_commitdate), max(l_receiptdate), \
               max(l_shipinstruct), max(l_shipmode), max(length(l_comment)) from lineitem";
    let t = Instant::now();
    client.sql(sql, |_| {}).await.expect("the scan runs");
    let scan_s = t.elapsed().as_secs_f64();
    // The same query on single-node DataFusion from the same objects: how
    // fast decoding every column goes on this machine.
    let t = Instant::now();
    compare::run_sql(single, sql)
        .await
        .expect("single node scans");
    let single_s = t.elapsed().as_secs_f64();
    // What this machine's cores allow with no S3 at all: the same query on
    // the local copies of the objects (in the page cache), and decoding
    // every column of every row group with nothing else on all cores.
    let local_ctx = compare::single_node_context(None);
    let local_sql = sql.replace(
        "from lineitem",
        &format!("from '{}/'", local.join("lineitem").display()),
    );
    compare::run_sql(&local_ctx, &local_sql)
        .await
        .expect("single node scans local files");
    let t = Instant::now();
    compare::run_sql(&local_ctx, &local_sql)
        .await
        .expect("single node scans local files");
    let local_s = t.elapsed().as_secs_f64();
    let local_dir = local.join("lineitem");
    let decode_s = tokio::task::spawn_blocking(move || decode_all(&local_dir))
        .await
        .expect("decoding runs");
    let mb = total as f64 / 1e6;
    println!(
        "S3 scan of lineitem ({mb:.0} MB in {} objects): plain parallel GET {:.0} MB/s, daskrs reading every column {:.0} MB/s ({:.0}%), single-node DataFusion {:.0} MB/s",
        objects.len(),
        mb / get_s,
        mb / scan_s,
        100.0 * get_s / scan_s,
        mb / single_s
    );
    println!(
        "  without S3, same files from local disk: single-node DataFusion {:.0} MB/s; decoding every column and nothing else on {} threads {:.0} MB/s ({:.0}% of the GET rate)",
        mb / local_s,
        decode_threads(),
        mb / decode_s,
        100.0 * get_s / decode_s
    );
}

fn decode_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Seconds to decode every row group of the Parquet files in `dir` into
/// Arrow, spread over all cores; the ceiling of any scan on this machine.
fn decode_all(dir: &std::path::Path) -> f64 {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut work = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the local lineitem directory") {
        let path = entry.expect("a directory entry").path();
        let file = std::fs::File::open(&path).expect("a local file");
        let groups = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("Parquet metadata")
            .metadata()
            .num_row_groups();
        work.extend((0..groups).map(|g| (path.clone(), g)));
    }
    let threads = decode_threads();
    let work = std::sync::Mutex::new(work);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let next = work.lock().expect("work list").pop();
                    let Some((path, group)) = next else { break };
                    let file = std::fs::File::open(&path).expect("a local file");
                    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                        .expect("Parquet metadata")
                        .with_row_groups(vec![group])
                        .with_batch_size(8192)
                        .build()
                        .expect("a reader");
                    for batch in reader {
                        std::hint::black_box(batch.expect("a batch decodes"));
                    }
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let data = a.data.clone().unwrap_or_else(|| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
        PathBuf::from(home).join(format!(".cache/daskrs/tpch/sf{}", a.scale))
    });
    let files = (a.common.workers * a.common.threads).max(2) as usize;
    if !data.join("lineitem").exists() {
        eprintln!(
            "making TPC-H scale factor {} in {} ...",
            a.scale,
            data.display()
        );
        let t = Instant::now();
        let tmp = data.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        tpch::generate(&tmp, a.scale, files).expect("data is made");
        std::fs::rename(&tmp, &data).expect("data is moved in place");
        eprintln!("made in {:.1}s", t.elapsed().as_secs_f64());
    }
    let queries = a.common.queries_or_all(22);

    let location = a
        .location
        .clone()
        .unwrap_or_else(|| data.display().to_string());
    let tables = tpch::create_tables(&location);
    let plain = Cluster::start(&a.common, false, &tables).await;
    let secured = match a.secured {
        true => Some(Cluster::start(&a.common, true, &tables).await),
        false => None,
    };
    let client = &plain.client;
    let s3 = if location.starts_with("s3://") {
        let settings = daskrs_engine::S3Settings {
            endpoint: std::env::var("DASKRS_S3_ENDPOINT").ok(),
            ..Default::default()
        };
        Some(daskrs_engine::S3Access::load(&settings).await)
    } else {
        None
    };
    let single = compare::single_node_context(s3.clone());
    compare::run_sql(&single, &tables)
        .await
        .expect("tables are created");

    let dask = daskrs_bench::figures(a.dask_json.as_deref());

    println!(
        "TPC-H scale factor {}, Parquet from {location}, {} workers x {} threads; best of {}",
        a.scale, a.common.workers, a.common.threads, a.common.repeat
    );
    print!(
        "{:<6}{:>12}{:>16}{:>9}{:>8}{:>8}{:>12}{:>10}",
        "query", "daskrs s", "DataFusion s", "ratio", "stages", "tasks", "Dask s", "vs Dask"
    );
    if secured.is_some() {
        print!("{:>14}{:>8}", "token+TLS s", "cost");
    }
    println!();
    let (mut total_d, mut total_s, mut total_secured) = (0.0, 0.0, 0.0);
    for q in queries {
        let sql = tpch::query(q).expect("a TPC-H query number");
        let mut best_d = f64::MAX;
        let mut best_secured = f64::MAX;
        let mut answer = None;
        for round in 0..a.common.repeat.max(1) {
            // In turns, each first every other round.
            let mut sides = vec![(false, client)];
            if let Some(c) = &secured {
                sides.push((true, &c.client));
            }
            if round % 2 == 1 {
                sides.reverse();
            }
            for (is_secured, c) in sides {
                let t = Instant::now();
                let got = c
                    .sql(sql, |_| {})
                    .await
                    .unwrap_or_else(|e| panic!("Q{q}: {e}"));
                let took = t.elapsed().as_secs_f64();
                if is_secured {
                    best_secured = best_secured.min(took);
                } else {
                    best_d = best_d.min(took);
                }
                answer = Some(got);
            }
        }
        let mut best_s = f64::MAX;
        let mut want = Vec::new();
        for _ in 0..a.common.repeat.max(1) {
            let t = Instant::now();
            want = compare::run_sql(&single, sql)
                .await
                .expect("single node answers");
            best_s = best_s.min(t.elapsed().as_secs_f64());
        }
        let answer = answer.expect("ran at least once");
        assert_eq!(
            compare::rows(&answer.batches).unwrap(),
            compare::rows(&want).unwrap(),
            "Q{q}: answers differ"
        );
        total_d += best_d;
        total_s += best_s;
        let dask_s = dask.get(format!("q{q}")).and_then(|v| v.as_f64());
        print!(
            "Q{q:<5}{best_d:>12.3}{best_s:>16.3}{:>8.2}x{:>8}{:>8}{:>12}{:>10}",
            best_d / best_s,
            answer.stages,
            answer.tasks,
            dask_s
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into()),
            dask_s
                .map(|s| format!("{:.1}x", s / best_d))
                .unwrap_or_else(|| "-".into()),
        );
        if secured.is_some() {
            total_secured += best_secured;
            print!(
                "{best_secured:>14.3}{:>7.1}%",
                (best_secured - best_d) / best_d * 100.0
            );
        }
        println!();
    }
    print!(
        "total {total_d:>11.3}{total_s:>16.3}{:>8.2}x",
        total_d / total_s
    );
    if secured.is_some() {
        print!(
            "{:>38}{total_secured:>14.3}{:>7.1}%",
            "",
            (total_secured - total_d) / total_d * 100.0
        );
    }
    println!();
    if let Some(s3) = &s3 {
        scan_throughput(client, &single, s3, &location, &data).await;
    }
    println!("{}", plain.peak_memory());
}
