#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, unit,
# property and integration tests. Needs a Rust toolchain and Go: the S3
# tests run a real MinIO server, and the operator tests a real
# kube-apiserver, etcd and kube-controller-manager with the real kubectl,
# all built once from the Go module proxy into ~/.cache/daskrs/bin; the
# dashboard test renders the page in Debian's Chromium (apt, once); the
# Python package is tested with pytest in two environments made from PyPI
# under ~/.cache/daskrs (the newest releases, and the oldest supported), into
# which the wheel built from this checkout goes before the Rust tests, whose
# end-to-end test runs its Python workers with the newest; the
# TPC-DS data the SQL differential test reads is made once by DuckDB's
# tpcds extension, also from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds share one target directory outside the checkout, so a fresh clone
# on the same machine does not compile everything again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Each build leaves its test executables in the shared target directory,
# and a new build of a test makes a new one beside the old: only the newest
# of each is of use, and the rest would fill the disk over many runs.
deps="$CARGO_TARGET_DIR/debug/deps"
if [ -d "$deps" ]; then
  find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -printf '%T@ %f\n' | sort -rn |
    awk '{ stem = $2; sub(/-[0-9a-f]+$/, "", stem); if (seen[stem]++) print $2 }' |
    (cd "$deps" && xargs -r rm -f)
fi

echo "== MinIO for the S3 tests"
scripts/install-minio.sh
echo "== Kubernetes control plane for the operator tests"
scripts/install-kube.sh
echo "== Chromium for the dashboard test"
scripts/install-chromium.sh
echo "== TPC-DS data for the SQL differential test"
scripts/tpcds-data.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== Python environments"
python_newest=$(scripts/python-env.sh newest)
python_oldest=$(scripts/python-env.sh oldest)
echo "== the client library and the Python extension link no scheduler, worker or DataFusion"
for crate in "daskrs-client --no-default-features" daskrs-python; do
  # shellcheck disable=SC2086
  linked=$(cargo tree -p $crate -e normal --prefix none --locked)
  if grep -E '^(daskrs-(scheduler|worker|engine)|datafusion) ' <<<"$linked"; then
    echo "error: $crate links the crates above" >&2
    exit 1
  fi
done
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Before the Rust tests: the end-to-end test's worker pods run Python
# tasks with the newest environment, as the python-worker image would.
echo "== Python package: wheel"
cargo build -p daskrs-client --bin daskrs --locked
wheels="$CARGO_TARGET_DIR/wheels"
rm -rf "$wheels"
"$python_newest" -m maturin build --manifest-path python/Cargo.toml --interpreter "$python_newest" --locked --out "$wheels" --quiet
wheel=$(ls "$wheels"/daskrs-*.whl)
echo "$(basename "$wheel"): $(du -h "$wheel" | cut -f1)"
export DASKRS_BIN="$CARGO_TARGET_DIR/debug/daskrs"
for python in "$python_newest" "$python_oldest"; do
  "$python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
done
echo "== cargo test"
# Every test binary runs even when one fails, so one red test hides no other.
# The Python extension is tested by pytest below.
status=0
export DASKRS_TEST_PYTHON="$python_newest"
cargo test --workspace --exclude daskrs-python --locked --no-fail-fast || status=$?
for python in "$python_newest" "$python_oldest"; do
  echo "== pytest on $("$python" -c 'import sys, dask; print("Python", sys.version.split()[0], "dask", dask.__version__)')"
  # The other environment serves as a worker of other versions.
  other=$python_oldest
  [ "$python" = "$python_oldest" ] && other=$python_newest
  DASKRS_OTHER_PYTHON="$other" "$python" -m pytest -q -p no:cacheprovider python/tests || status=$?
done
exit "$status"
