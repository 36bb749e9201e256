#!/usr/bin/env bash
# Install a pinned MinIO server (S3-compatible, for tests) into ~/.cache/daskrs/bin.
# MinIO is built from source through the Go module proxy; no release binaries are downloaded.
# Idempotent: returns at once when the pinned version is already installed.
set -euo pipefail

# MinIO tags are RELEASE.* names, so the Go proxy only knows pseudo-versions.
# This one (commit 7aac2a2c5b7c, 2026-02-12) has no replace directives, so `go install` accepts it.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
BIN_DIR="${DASKRS_BIN_DIR:-$HOME/.cache/daskrs/bin}"
MARKER="$BIN_DIR/minio.version"

log() { printf 'install-minio: %s\n' "$*" >&2; }

if [[ -x "$BIN_DIR/minio" && -f "$MARKER" && "$(<"$MARKER")" == "$MINIO_VERSION" ]]; then
  log "minio $MINIO_VERSION already installed: $BIN_DIR/minio"
  exit 0
fi

command -v go >/dev/null || { log "error: go is not installed"; exit 1; }
mkdir -p "$BIN_DIR"
rm -f "$MARKER"

log "building github.com/minio/minio@$MINIO_VERSION into $BIN_DIR (first build takes several minutes)"
start=$SECONDS
# GOTOOLCHAIN=local: use the installed Go (>= go.mod's 1.24) instead of fetching a toolchain.
# CGO_ENABLED=0: static binary, as upstream builds it; no C compiler needed.
GOBIN="$BIN_DIR" GOTOOLCHAIN=local CGO_ENABLED=0 \
  go install -trimpath "github.com/minio/minio@$MINIO_VERSION"
printf '%s\n' "$MINIO_VERSION" >"$MARKER"
log "installed $BIN_DIR/minio in $((SECONDS - start))s"
