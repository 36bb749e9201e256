#!/usr/bin/env bash
# KubeCluster benchmark: time from `daskrs.KubeCluster(n_workers=N)` to a
# client whose cluster has all N workers, and from `close()` to nothing
# left, for 1, 10 and 100 workers, on a real kube-apiserver, etcd and
# kube-controller-manager with the chart installed and a test node running
# the pods as processes of this machine (client/tests/kube_bench.rs).
# dask-kubernetes' own KubeCluster, with its operator, runs the same steps
# on the same API server, side by side.
#
#   bench/kube.sh                  # both, 1, 10 and 100 workers
#   SIZES=1,10 bench/kube.sh
#   ONLY=daskrs bench/kube.sh      # without the reference
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/daskrs/target}
export DASKRS_BENCH_SIZES=${SIZES:-1,10,100}

scripts/install-kube.sh
scripts/install-minio.sh
# The notebook's Python, and the workers': the newest environment with the
# package built from this checkout.
python=$(scripts/python-env.sh newest)
cargo build --locked -p daskrs-client --bin daskrs -p daskrs-operator >&2
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m maturin build --manifest-path python/Cargo.toml --interpreter "$python" --locked --out "$wheels" --quiet
"$python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/daskrs-*.whl
# The reference: dask-kubernetes, its operator and the Dask its pods run.
if [[ "${ONLY:-}" != daskrs ]]; then
  export DASK_KUBERNETES_PYTHON
  DASK_KUBERNETES_PYTHON=$(bench/install-dask-kubernetes.sh | tail -n 1)
fi
DASKRS_TEST_PYTHON=$python cargo test --locked -p daskrs-client --test kube_bench -- \
  --ignored --nocapture 2>&1 | grep -v '^node: '
