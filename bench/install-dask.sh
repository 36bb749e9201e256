#!/usr/bin/env bash
# Installs the pinned Python Dask used as the reference in the benchmarks into
# a venv under ~/.cache/daskrs and prints the venv's python on the last line.
set -euo pipefail
DASK_VERSION="${DASK_VERSION:-2026.8.0}"
cache="${DASKRS_CACHE:-$HOME/.cache/daskrs}"
venv="$cache/dask-venv"
python="$venv/bin/python"
# dask.dataframe with pandas and pyarrow, for the TPC-H comparison.
if [ ! -x "$python" ] || [ "$("$python" -c 'import dask, dask.dataframe, pyarrow; print(dask.__version__)' 2>/dev/null)" != "$DASK_VERSION" ]; then
  echo "installing dask[distributed,dataframe]==$DASK_VERSION into $venv" >&2
  python3 -m venv "$venv" >&2
  "$python" -m pip install --quiet --upgrade pip >&2
  "$python" -m pip install --quiet "dask[distributed,dataframe]==$DASK_VERSION" pyarrow >&2
fi
echo "$python"
