#!/usr/bin/env bash
# TPC-H benchmark: daskrs (release build, scheduler + 2 worker processes) next
# to single-node DataFusion on the same local Parquet files in the same run,
# and Q1 and Q3 next to Dask DataFrame on a 2-worker LocalCluster.
#
#   bench/tpch.sh [--scale SF] [--repeat K] [--threads T] [--no-dask]
#
# The data is made once under ~/.cache/daskrs/tpch/. Nothing else should be
# running: the two cores are shared by everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
scale=1 repeat=1 threads=1 dask=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --no-dask) dask=no; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
data="$HOME/.cache/daskrs/tpch/sf$scale"

cargo build --release --locked -p daskrs-client -p daskrs-bench >&2
bench_bin="$CARGO_TARGET_DIR/release/daskrs-tpch-bench"
args=(--daskrs "$CARGO_TARGET_DIR/release/daskrs" --scale "$scale" --data "$data"
      --repeat "$repeat" --threads "$threads")
if [ "$dask" = yes ]; then
  # Make the data first, so Dask reads the same files.
  DASKRS_LOG=error "$bench_bin" "${args[@]}" --queries 6 >/dev/null
  python=$(bench/install-dask.sh | tail -1)
  out=$(mktemp)
  trap 'rm -f "$out"' EXIT
  echo "running Dask DataFrame ..." >&2
  "$python" bench/dask_tpch.py --data "$data" --repeat "$repeat" > "$out"
  args+=(--dask-json "$out")
fi
echo "running daskrs and single-node DataFusion ..." >&2
DASKRS_LOG=error "$bench_bin" "${args[@]}"
