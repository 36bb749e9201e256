#!/usr/bin/env bash
# Installs the pinned dask-kubernetes (its operator, its KubeCluster) into a
# venv under ~/.cache/daskrs and prints the venv's python on the last line:
# the reference in bench/operator.sh and bench/kube.sh.
#
# Dask and distributed are pinned to the release dask-kubernetes 2026.3.0
# came with: the pods its KubeCluster makes run `dask-scheduler` and
# `dask-worker`, which distributed 2026.6.0 removed (the `dask scheduler`
# and `dask worker` subcommands remain; dask/distributed#9335). The test
# node runs those pods with this venv, as the image `ghcr.io/dask/dask:2026.3.0`.
set -euo pipefail
DASK_KUBERNETES_VERSION="${DASK_KUBERNETES_VERSION:-2026.3.0}"
DASK_VERSION="${DASK_KUBERNETES_DASK_VERSION:-2026.3.0}"
cache="${DASKRS_CACHE:-$HOME/.cache/daskrs}"
venv="$cache/dask-kubernetes-venv"
python="$venv/bin/python"
installed() {
  "$python" -c 'import importlib.metadata as m; print(m.version("dask-kubernetes"), m.version("distributed"))' 2>/dev/null
}
if [ ! -x "$python" ] || [ "$(installed)" != "$DASK_KUBERNETES_VERSION $DASK_VERSION" ]; then
  echo "installing dask-kubernetes==$DASK_KUBERNETES_VERSION (dask $DASK_VERSION) into $venv" >&2
  python3 -m venv "$venv" >&2
  "$python" -m pip install --quiet --upgrade pip >&2
  "$python" -m pip install --quiet "dask-kubernetes==$DASK_KUBERNETES_VERSION" \
    "dask[distributed]==$DASK_VERSION" "distributed==$DASK_VERSION" >&2
fi
echo "$python"
