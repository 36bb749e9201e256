#!/usr/bin/env bash
# Stop the MinIO server started by scripts/minio-up.sh DIR (keeps DIR/data and DIR/minio.log).
set -euo pipefail

dir=${1:?usage: minio-down.sh DIR}
[[ -f $dir/pid ]] || { echo "minio-down: no $dir/pid, nothing to stop" >&2; exit 0; }
pid=$(<"$dir/pid")

# Only signal the pid if it still is minio (pids get reused).
if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == minio ]]; then
  kill -TERM "$pid"
  for _ in $(seq 100); do  # up to 10 s, then SIGKILL
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "minio-down: pid $pid ignored SIGTERM, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "minio-down: stopped pid $pid" >&2
fi
rm -f "$dir/pid"
