#!/usr/bin/env bash
# Stop the control plane that scripts/kube-up.sh DIR started (by pid, newest
# first) and wait for each process to exit. DIR's data and logs are kept.
set -euo pipefail
DIR=${1:?usage: kube-down.sh DIR}
alive() { [[ -r /proc/$1/stat && $(cut -d' ' -f3 "/proc/$1/stat") != Z ]]; } # zombies count as gone
for c in kube-controller-manager kube-apiserver etcd; do
  f=$DIR/$c.pid
  [[ -f $f ]] || continue
  pid=$(cat "$f")
  # Only signal the process if the pid still belongs to our binary.
  if [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") == */$c\ * ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      echo "kube-down: $c ($pid) ignored SIGTERM for 10s, killing" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
done
