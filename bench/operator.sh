#!/usr/bin/env bash
# Operator benchmark: time from `kubectl apply` of a DaskCluster to all of its
# worker pods created, for 1, 100 and 1000 workers, and the operator's CPU and
# memory, on a real kube-apiserver, etcd and kube-controller-manager started
# here. The Dask Kubernetes operator (kopf, from PyPI) runs the same steps
# against the same control plane, side by side.
#
#   bench/operator.sh                     # both operators, 1, 100 and 1000 workers
#   SIZES=1,100 ONLY=daskrs bench/operator.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-1,100,1000}
ONLY=${ONLY:-}
DASK_KUBERNETES_VERSION=${DASK_KUBERNETES_VERSION:-2026.3.0}
cache=${DASKRS_CACHE:-$HOME/.cache/daskrs}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
export PATH=$cache/bin:$PATH

scripts/install-kube.sh
cargo build --release --locked -p daskrs-operator >&2

# The reference operator and the Kubernetes client the driver watches with.
python=$(DASK_KUBERNETES_VERSION=$DASK_KUBERNETES_VERSION bench/install-dask-kubernetes.sh | tail -n 1)
dask_crds=$("$python" -c 'import dask_kubernetes, os; print(os.path.join(os.path.dirname(dask_kubernetes.__file__), "operator/deployment/helm/dask-kubernetes-operator/crds"))')

work=$(mktemp -d)
trap 'scripts/kube-down.sh "$work/kube" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
KUBE_UP_PARENT=$$ scripts/kube-up.sh "$work/kube"
export KUBECONFIG=$work/kube/kubeconfig
kubectl apply --server-side -f crds/daskcluster.yaml >/dev/null
kubectl apply --server-side -f "$dask_crds" >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null

"$python" bench/operator_bench.py --work "$work" --sizes "$SIZES" ${ONLY:+--only "$ONLY"} \
  --daskrs-operator "$CARGO_TARGET_DIR/release/daskrs-operator" \
  --dask-kubernetes-version "$DASK_KUBERNETES_VERSION"
