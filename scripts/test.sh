#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, unit,
# property and integration tests. Needs a Rust toolchain and Go (the S3
# tests run a real MinIO server, built once from the Go module proxy).
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds share one target directory outside the checkout, so a fresh clone
# on the same machine does not compile everything again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== MinIO for the S3 tests"
scripts/install-minio.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
