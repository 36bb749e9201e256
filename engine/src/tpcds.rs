//! TPC-DS as `scripts/tpcds-data.sh` lays it out (DuckDB's tpcds extension
//! makes the data and the queries): `<table>/part-0.parquet` for each table
//! and `queries/<n>.sql` for each of the 99 queries.

use std::path::{Path, PathBuf};

pub const TABLES: [&str; 24] = [
    "call_center",
    "catalog_page",
    "catalog_returns",
    "catalog_sales",
    "customer",
    "customer_address",
    "customer_demographics",
    "date_dim",
    "household_demographics",
    "income_band",
    "inventory",
    "item",
    "promotion",
    "reason",
    "ship_mode",
    "store",
    "store_returns",
    "store_sales",
    "time_dim",
    "warehouse",
    "web_page",
    "web_returns",
    "web_sales",
    "web_site",
];

/// Where `scripts/tpcds-data.sh` keeps scale factor `scale`.
pub fn default_dir(scale: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
        .join(format!(".cache/daskrs/tpcds/sf{scale}"))
}

/// Whether `dir` holds a whole data set (the script marks it last).
pub fn is_complete(dir: &Path) -> bool {
    dir.join(".complete").exists()
}

/// `CREATE EXTERNAL TABLE` for every table under `location`.
pub fn create_tables(location: &str) -> String {
    crate::tpch::parquet_tables(&TABLES, location)
}

/// Query `n` (1 to 99) of the data set in `dir`.
pub fn query(dir: &Path, n: usize) -> std::io::Result<String> {
    std::fs::read_to_string(dir.join("queries").join(format!("{n}.sql")))
}
