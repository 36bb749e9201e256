//! TPC-H: sample data made with the tpchgen crates, and the 22 queries.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use tpchgen::generators as g;
use tpchgen_arrow as ta;

/// The eight tables, smallest first.
pub const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// The 22 queries with the specification's validation parameters. Ties in
/// `order by` are broken by a key so that results compare row for row.
pub const QUERIES: [&str; 22] = [
    include_str!("../tpch/q01.sql"),
    include_str!("../tpch/q02.sql"),
    include_str!("../tpch/q03.sql"),
    include_str!("../tpch/q04.sql"),
    include_str!("../tpch/q05.sql"),
    include_str!("../tpch/q06.sql"),
    include_str!("../tpch/q07.sql"),
    include_str!("../tpch/q08.sql"),
    include_str!("../tpch/q09.sql"),
    include_str!("../tpch/q10.sql"),
    include_str!("../tpch/q11.sql"),
    include_str!("../tpch/q12.sql"),
    include_str!("../tpch/q13.sql"),
    include_str!("../tpch/q14.sql"),
    include_str!("../tpch/q15.sql"),
    include_str!("../tpch/q16.sql"),
    include_str!("../tpch/q17.sql"),
    include_str!("../tpch/q18.sql"),
    include_str!("../tpch/q19.sql"),
    include_str!("../tpch/q20.sql"),
    include_str!("../tpch/q21.sql"),
    include_str!("../tpch/q22.sql"),
];

/// Query `n` (1 to 22).
pub fn query(n: usize) -> Option<&'static str> {
    QUERIES.get(n.checked_sub(1)?).copied()
}

/// One file written.
#[derive(Debug, Clone)]
pub struct Written {
    pub table: &'static str,
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>>;

fn generator(table: &str, scale: f64, part: i32, parts: i32) -> (SchemaRef, Batches) {
    match table {
        "region" => (
            ta::RegionArrow::schema_ref(),
            Box::new(ta::RegionArrow::new(g::RegionGenerator::new(
                scale, part, parts,
            ))),
        ),
        "nation" => (
            ta::NationArrow::schema_ref(),
            Box::new(ta::NationArrow::new(g::NationGenerator::new(
                scale, part, parts,
            ))),
        ),
        "supplier" => (
            ta::SupplierArrow::schema_ref(),
            Box::new(ta::SupplierArrow::new(g::SupplierGenerator::new(
                scale, part, parts,
            ))),
        ),
        "customer" => (
            ta::CustomerArrow::schema_ref(),
            Box::new(ta::CustomerArrow::new(g::CustomerGenerator::new(
                scale, part, parts,
            ))),
        ),
        "part" => (
            ta::PartArrow::schema_ref(),
            Box::new(ta::PartArrow::new(g::PartGenerator::new(
                scale, part, parts,
            ))),
        ),
        "partsupp" => (
            ta::PartSuppArrow::schema_ref(),
            Box::new(ta::PartSuppArrow::new(g::PartSuppGenerator::new(
                scale, part, parts,
            ))),
        ),
        "orders" => (
            ta::OrderArrow::schema_ref(),
            Box::new(ta::OrderArrow::new(g::OrderGenerator::new(
                scale, part, parts,
            ))),
        ),
        _ => (
            ta::LineItemArrow::schema_ref(),
            Box::new(ta::LineItemArrow::new(g::LineItemGenerator::new(
                scale, part, parts,
            ))),
        ),
    }
}

/// Writes every table at `scale` as Parquet under `dir/<table>/`, the larger
/// tables in `files` files each (nation and region are always one file).
pub fn generate(dir: &Path, scale: f64, files: usize) -> Result<Vec<Written>, String> {
    if scale.is_nan() || scale <= 0.0 {
        return Err(format!("scale factor must be positive, got {scale}"));
    }
    let mut out = Vec::new();
    for table in TABLES {
        let parts = if matches!(table, "nation" | "region") {
            1
        } else {
            files.max(1)
        };
        let tdir = dir.join(table);
        std::fs::create_dir_all(&tdir)
            .map_err(|e| format!("cannot create {}: {e}", tdir.display()))?;
        for part in 1..=parts {
            let path = tdir.join(format!("part-{part:03}.parquet"));
            let (schema, batches) = generator(table, scale, part as i32, parts as i32);
            let rows = write_parquet(&path, schema, batches)?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            out.push(Written {
                table,
                path,
                rows,
                bytes,
            });
        }
    }
    Ok(out)
}

fn write_parquet(path: &Path, schema: SchemaRef, batches: Batches) -> Result<u64, String> {
    let err = |e: &dyn std::fmt::Display| format!("writing {}: {e}", path.display());
    let file = File::create(path).map_err(|e| err(&e))?;
    let mut w = ArrowWriter::try_new(file, schema, Some(crate::write::parquet_properties()))
        .map_err(|e| err(&e))?;
    let mut rows = 0;
    for b in batches {
        let b = b.map_err(|e| err(&e))?;
        rows += b.num_rows() as u64;
        w.write(&b).map_err(|e| err(&e))?;
    }
    w.close().map_err(|e| err(&e))?;
    Ok(rows)
}

/// `CREATE EXTERNAL TABLE` statements for tables written under `location`
/// (a local directory or an `s3://bucket/prefix`).
pub fn create_tables(location: &str) -> String {
    parquet_tables(&TABLES, location)
}

/// `CREATE EXTERNAL TABLE` statements for `tables`, each a directory of
/// Parquet files of its name under `location`.
pub fn parquet_tables(tables: &[&str], location: &str) -> String {
    let base = location.trim_end_matches('/');
    tables
        .iter()
        .map(|t| format!("CREATE EXTERNAL TABLE IF NOT EXISTS {t} STORED AS PARQUET LOCATION '{base}/{t}/';\n"))
        .collect()
}
