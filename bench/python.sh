#!/usr/bin/env bash
# The Python package's benchmark: daskrs.Client(n_workers=2,
# threads_per_worker=1) next to distributed.LocalCluster(n_workers=2,
# threads_per_worker=1), from the same venv, in one run (bench/python_bench.py).
#
#   bench/python.sh [--tasks N] [--repeat K] [--no-groupby]
#
# Release builds of the daskrs command and the wheel. The groupby workload
# reads TPC-H lineitem at scale factor 1 (made once by daskrs-tpch-bench
# into ~/.cache/daskrs/tpch/sf1). Nothing else should be running.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
groupby=yes args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-groupby) groupby=no; shift ;;
    --tasks|--repeat) args+=("$1" "$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release --locked -p daskrs-client --bin daskrs >&2
python=$(scripts/python-env.sh newest)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m maturin build --release --manifest-path python/Cargo.toml --interpreter "$python" \
  --locked --out "$wheels" --quiet >&2
"$python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/daskrs-*.whl
if [ "$groupby" = yes ]; then
  data="$HOME/.cache/daskrs/tpch/sf1"
  if [ ! -d "$data/lineitem" ]; then
    cargo build --release --locked -p daskrs-bench >&2
    DASKRS_LOG=error "$CARGO_TARGET_DIR/release/daskrs-tpch-bench" --daskrs "$CARGO_TARGET_DIR/release/daskrs" \
      --scale 1 --data "$data" --repeat 1 --queries 6 >/dev/null
  fi
  args+=(--lineitem "$data/lineitem")
fi
DASKRS_BIN="$CARGO_TARGET_DIR/release/daskrs" DASKRS_LOG=error "$python" bench/python_bench.py "${args[@]}"
