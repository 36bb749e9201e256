# Sourced by the scripts that start servers which cannot be told to bind
# port 0 and say what they got (MinIO, etcd, kube-apiserver).
#
# reserve_port VAR: sets VAR to a free loopback port below the kernel's
# ephemeral range, so no process that binds port 0 (our own servers and
# workers, every client socket) can be handed it, and holds a lock on it so
# no other script of ours picks it while this shell or any server it starts
# lives: the lock's file descriptor is inherited by those servers (every
# server a script starts inherits every port the script reserved) and is
# released with the last of them. The locks are per user, as in the tests'
# harness (client/tests/harness/mod.rs), which takes the same ones.

reserve_port() {
  local var=$1 lo _hi p fd
  read -r lo _hi </proc/sys/net/ipv4/ip_local_port_range
  if ((lo <= 2048)); then
    echo "reserve_port: the ephemeral port range starts at $lo; no room below it" >&2
    return 1
  fi
  local first=$((lo > 12048 ? lo - 10000 : 1024))
  local dir="/tmp/daskrs-ports-$(id -u)"
  mkdir -p -m 700 "$dir"
  for p in $(shuf -i "$first-$((lo - 1))" -n 500); do
    # Opened without truncating; a lock file that cannot be opened is skipped.
    exec {fd}>>"$dir/$p.lock" 2>/dev/null || continue
    if flock -n "$fd" && python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null; then
      printf -v "$var" %s "$p"
      return 0
    fi
    exec {fd}>&-
  done
  echo "reserve_port: no free port in $first-$((lo - 1))" >&2
  return 1
}
