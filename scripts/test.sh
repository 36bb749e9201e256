#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, unit,
# property and integration tests. Needs a Rust toolchain and Go: the S3
# tests run a real MinIO server, and the operator tests a real
# kube-apiserver, etcd and kube-controller-manager with the real kubectl,
# all built once from the Go module proxy into ~/.cache/daskrs/bin; the
# dashboard test renders the page in Debian's Chromium (apt, once).
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds share one target directory outside the checkout, so a fresh clone
# on the same machine does not compile everything again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== MinIO for the S3 tests"
scripts/install-minio.sh
echo "== Kubernetes control plane for the operator tests"
scripts/install-kube.sh
echo "== Chromium for the dashboard test"
scripts/install-chromium.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== the client library alone links no scheduler, worker or DataFusion"
linked=$(cargo tree -p daskrs-client --no-default-features -e normal --prefix none --locked)
if grep -E '^(daskrs-(scheduler|worker|engine)|datafusion) ' <<<"$linked"; then
  echo "error: daskrs-client without its features links the crates above" >&2
  exit 1
fi
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Every test binary runs even when one fails, so one red test hides no other.
cargo test --workspace --locked --no-fail-fast
