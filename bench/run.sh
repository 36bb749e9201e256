#!/usr/bin/env bash
# Task-throughput benchmark: daskrs (release build, scheduler + 2 worker
# processes) next to Python Dask's LocalCluster(n_workers=2,
# threads_per_worker=1) on the same machine, same workloads, same run.
#
#   bench/run.sh [--map-tasks N] [--tree-leaves N] [--repeat K]
#
# Nothing else should be running: the two cores are shared by everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
map=10000 leaves=10000 repeat=3
while [ $# -gt 0 ]; do
  case "$1" in
    --map-tasks) map=$2; shift 2 ;;
    --tree-leaves) leaves=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release --locked -p daskrs-client -p daskrs-bench >&2
python=$(bench/install-dask.sh | tail -1)
out=$(mktemp) tuned=$(mktemp)
trap 'rm -f "$out" "$tuned"' EXIT
echo "running Dask as installed ..." >&2
"$python" bench/dask_tasks.py --map-tasks "$map" --tree-leaves "$leaves" --repeat "$repeat" > "$out"
echo "running Dask with worker-saturation inf ..." >&2
"$python" bench/dask_tasks.py --map-tasks "$map" --tree-leaves "$leaves" --repeat "$repeat" \
  --worker-saturation inf > "$tuned"
echo "running daskrs ..." >&2
DASKRS_LOG=error "$CARGO_TARGET_DIR/release/daskrs-bench" --daskrs "$CARGO_TARGET_DIR/release/daskrs" \
  --map-tasks "$map" --tree-leaves "$leaves" --repeat "$repeat" --dask-json "$out" --dask-tuned-json "$tuned"
