#!/usr/bin/env bash
# Start a throwaway MinIO (S3) server on 127.0.0.1 for tests.
# Usage: scripts/minio-up.sh DIR   (PORT, DASKRS_S3_ACCESS_KEY, DASKRS_S3_SECRET_KEY from env)
# Writes DIR/endpoint, DIR/pid, DIR/minio.log; data lives in DIR/data. Prints the endpoint.
set -euo pipefail

dir=${1:?usage: minio-up.sh DIR}
minio=${MINIO_BIN:-$HOME/.cache/daskrs/bin/minio}
log() { printf 'minio-up: %s\n' "$*" >&2; }

[[ -x $minio ]] || { log "error: $minio not found; run scripts/install-minio.sh"; exit 1; }
mkdir -p "$dir/data"
dir=$(cd "$dir" && pwd)

# Already running from this DIR? Reuse it.
if [[ -f $dir/pid && -f $dir/endpoint ]] && kill -0 "$(<"$dir/pid")" 2>/dev/null \
  && curl -fsS -o /dev/null "$(<"$dir/endpoint")/minio/health/ready"; then
  log "already running (pid $(<"$dir/pid"))"
  cat "$dir/endpoint"
  exit 0
fi

# A loopback port: $PORT if set, else one reserved below the ephemeral range
# (see ports.sh). The plain bind checks $PORT is free: minio listens with
# SO_REUSEPORT, so a second minio on a busy port would start "fine" and share
# the port with the first one.
if [[ -n ${PORT:-} ]]; then
  port=$(python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); print(s.getsockname()[1])' "$PORT" 2>/dev/null) \
    || { log "error: port $PORT on 127.0.0.1 is in use"; exit 1; }
else
  # shellcheck source=scripts/ports.sh
  source "$(dirname "$0")/ports.sh"
  reserve_port port
fi
endpoint="http://127.0.0.1:$port"

# MINIO_BROWSER=off: no web console (and no console port). MINIO_UPDATE=off: never check for updates.
# stdin/stdout/stderr are detached so a caller reading our output through a pipe does not hang.
MINIO_ROOT_USER=${DASKRS_S3_ACCESS_KEY:-daskrs} \
MINIO_ROOT_PASSWORD=${DASKRS_S3_SECRET_KEY:-daskrs-secret} \
MINIO_REGION=us-east-1 MINIO_BROWSER=off MINIO_UPDATE=off \
  "$minio" server --address "127.0.0.1:$port" "$dir/data" </dev/null >"$dir/minio.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/pid"
echo "$endpoint" >"$dir/endpoint"
log "started pid $pid on $endpoint"

for _ in $(seq 300); do  # 300 x 0.1 s = 30 s
  if curl -fsS -o /dev/null "$endpoint/minio/health/ready" 2>/dev/null; then
    echo "$endpoint"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done

log "error: minio exited or was not ready on $endpoint within 30 s; last lines of $dir/minio.log:"
tail -n 30 "$dir/minio.log" >&2
kill "$pid" 2>/dev/null || true
rm -f "$dir/pid"
exit 1
