#!/usr/bin/env bash
# Makes (once) the Python environment the Python tests run in, from the
# pins in python/requirements/<name>.txt, and prints its interpreter.
#   scripts/python-env.sh newest|oldest
# newest: the newest releases on PyPI, on CPython 3.12; oldest: the oldest
# releases daskrs supports, on CPython 3.10, the oldest the wheel serves.
# A pin file that changed makes the environment again.
set -euo pipefail
cd "$(dirname "$0")/.."

name="${1:?usage: scripts/python-env.sh newest|oldest}"
pins="python/requirements/$name.txt"
[ -f "$pins" ] || { echo "error: no pin file $pins" >&2; exit 2; }
case "$name" in
  newest) want=3.12 ;;
  oldest) want=3.10 ;;
  *) want=3 ;;
esac

# An interpreter of the wanted minor version: pyenv's, else one on PATH.
find_python() {
  local root
  root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  for p in "$root/versions/$want".*/bin/python3; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  for p in "python$want" python3; do
    command -v "$p" >/dev/null 2>&1 && { command -v "$p"; return; }
  done
  echo "error: no Python $want (nor python3) to make the $name environment with" >&2
  exit 2
}

venv="$HOME/.cache/daskrs/py-$name"
stamp="$venv/.pins"
if [ -x "$venv/bin/python" ] && cmp -s "$pins" "$stamp"; then
  echo "$venv/bin/python"
  exit 0
fi
python="$(find_python)"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$pins" >&2
cp "$pins" "$stamp"
echo "$venv/bin/python"
