#!/usr/bin/env bash
# TPC-DS benchmark, all 99 queries: daskrs (release build, scheduler + 2
# worker processes) next to single-node DataFusion on the same Parquet files
# in the same run, and DuckDB on the same files just before.
#
#   bench/tpcds.sh [--scale SF] [--repeat K] [--queries 1,3,..]
#
# The data is made once under ~/.cache/daskrs/tpcds/ (scripts/tpcds-data.sh).
# Nothing else should be running: the two cores are shared by everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
scale=1 repeat=1 queries=
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --queries) queries=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
data=$(scripts/tpcds-data.sh "$scale")
cargo build --release --locked -p daskrs-client -p daskrs-bench >&2
duck=$(mktemp)
trap 'rm -f "$duck"' EXIT
"${DASKRS_CACHE:-$HOME/.cache/daskrs}/duckdb-venv/bin/python" bench/duckdb_tpcds.py "$data" \
  --repeat "$repeat" --queries "$queries" >"$duck"
args=(--daskrs "$CARGO_TARGET_DIR/release/daskrs" --data "$data" --repeat "$repeat" --duckdb-json "$duck")
[ -n "$queries" ] && args+=(--queries "$queries")
DASKRS_LOG=error "$CARGO_TARGET_DIR/release/daskrs-tpcds-bench" "${args[@]}"
