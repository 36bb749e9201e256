#!/usr/bin/env bash
# TPC-H benchmark: daskrs (release build, scheduler + 2 worker processes) next
# to single-node DataFusion on the same local Parquet files in the same run,
# and Q1 and Q3 next to Dask DataFrame on a 2-worker LocalCluster.
#
#   bench/tpch.sh [--scale SF] [--repeat K] [--threads T] [--queries 1,3,..] [--no-dask] [--s3] [--secured]
#
# With --secured every query also runs on a second cluster with a token and
# TLS, in turns with the first, and the table gains their cost.
#
# With --s3 the same files are uploaded to a MinIO server on loopback and
# both sides read them from there; the S3 scan throughput of lineitem is
# printed next to plain parallel GETs of the same objects.
#
# The data is made once under ~/.cache/daskrs/tpch/. Nothing else should be
# running: the two cores are shared by everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
scale=1 repeat=1 threads=1 dask=yes s3=no queries= secured=no
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --queries) queries=$2; shift 2 ;;
    --no-dask) dask=no; shift ;;
    --s3) s3=yes; dask=no; shift ;;
    --secured) secured=yes; shift ;;
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
if [ "$s3" = yes ]; then
  DASKRS_LOG=error "$bench_bin" "${args[@]}" --queries 6 >/dev/null  # makes the data
  scripts/install-minio.sh
  minio_dir=$(mktemp -d)
  trap 'scripts/minio-down.sh "$minio_dir" >/dev/null 2>&1; rm -rf "$minio_dir"' EXIT
  endpoint=$(scripts/minio-up.sh "$minio_dir")
  export AWS_ACCESS_KEY_ID=daskrs AWS_SECRET_ACCESS_KEY=daskrs-secret AWS_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true DASKRS_S3_ENDPOINT="$endpoint"
  python=$(bench/install-dask.sh | tail -1)
  "$python" -m pip install --quiet boto3 >&2
  echo "uploading $data to s3://tpch/sf$scale ..." >&2
  "$python" - "$endpoint" "$data" "sf$scale" <<'PY'
import os, sys, boto3
endpoint, data, prefix = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
s3.create_bucket(Bucket="tpch")
for root, _, files in os.walk(data):
    for f in files:
        path = os.path.join(root, f)
        s3.upload_file(path, "tpch", f"{prefix}/{os.path.relpath(path, data)}")
PY
  args+=(--location "s3://tpch/sf$scale")
fi
if [ -n "$queries" ]; then
  args+=(--queries "$queries")
fi
if [ "$secured" = yes ]; then
  args+=(--secured)
fi
echo "running daskrs and single-node DataFusion ..." >&2
DASKRS_LOG=error "$bench_bin" "${args[@]}"
