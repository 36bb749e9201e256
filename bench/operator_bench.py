"""Times operators from `kubectl apply` of a DaskCluster to all worker pods
created. Run by bench/operator.sh, which starts the control plane and applies
the CRDs; KUBECONFIG points at it.

For every operator and size: the operator runs as a local process in its own
namespace; a pod watch opened before the apply notes when the first and the
N-th worker pod appear; a sampler reads the operator's resident memory and CPU
time from /proc. The cluster is then deleted and the next size starts once
its pods are gone.
"""

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from kubernetes import client, config, watch

TIMEOUT = 1800


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubectl(*args, stdin=None):
    out = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


class Pods:
    """Names of the pods that match a selector, kept current by a watch."""

    def __init__(self, api, namespace, selector):
        self.cv = threading.Condition()
        listed = api.list_namespaced_pod(namespace, label_selector=selector)
        self.names = {p.metadata.name for p in listed.items}
        self.first = None
        self.version = listed.metadata.resource_version
        self.args = (api, namespace, selector)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        api, namespace, selector = self.args
        while True:
            w = watch.Watch()
            for ev in w.stream(
                api.list_namespaced_pod,
                namespace,
                label_selector=selector,
                resource_version=self.version,
                timeout_seconds=300,
            ):
                pod = ev["object"]
                self.version = pod.metadata.resource_version
                with self.cv:
                    if ev["type"] == "ADDED":
                        self.names.add(pod.metadata.name)
                        if self.first is None:
                            self.first = time.monotonic()
                    elif ev["type"] == "DELETED":
                        self.names.discard(pod.metadata.name)
                    self.cv.notify_all()

    def wait_count(self, n, what):
        with self.cv:
            if not self.cv.wait_for(lambda: len(self.names) == n, TIMEOUT):
                sys.exit(f"timed out waiting for {what}: {len(self.names)} of {n}")
            return time.monotonic()


class Sampler:
    """Peak resident memory and CPU time of one process, read from /proc."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = 0
        self.running = True
        threading.Thread(target=self._run, daemon=True).start()

    def rss(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _run(self):
        while self.running:
            try:
                self.peak = max(self.peak, self.rss())
            except OSError:
                return
            time.sleep(0.02)


class Operator:
    def __init__(self, name, cmd, env, ready_url, ready_text, log):
        self.name = name
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"{name} exited with {self.proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(ready_url, timeout=1) as r:
                    if ready_text in r.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"{name} not ready after 120 s; see {log}")
            time.sleep(0.1)
        # Both operators list and open their watches right after they answer.
        time.sleep(2)
        self.sampler = Sampler(self.proc.pid)

    def stop(self):
        self.sampler.running = False
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def daskrs_manifest(n):
    return f"""apiVersion: daskrs.dev/v1alpha1
kind: DaskCluster
metadata:
  name: bench
spec:
  worker:
    replicas: {n}
"""


# A DaskCluster as in the Dask Kubernetes operator's documentation.
def dask_manifest(n):
    return f"""apiVersion: kubernetes.dask.org/v1
kind: DaskCluster
metadata:
  name: bench
spec:
  worker:
    replicas: {n}
    spec:
      containers:
      - name: worker
        image: ghcr.io/dask/dask:latest
        args: [dask-worker, --name, $(DASK_WORKER_NAME), --dashboard, --dashboard-address, "8788"]
        ports:
        - name: http-dashboard
          containerPort: 8788
  scheduler:
    spec:
      containers:
      - name: scheduler
        image: ghcr.io/dask/dask:latest
        args: [dask-scheduler]
        ports:
        - name: tcp-comm
          containerPort: 8786
        - name: http-dashboard
          containerPort: 8787
    service:
      type: ClusterIP
      selector:
        dask.org/cluster-name: bench
        dask.org/component: scheduler
      ports:
      - name: tcp-comm
        port: 8786
        targetPort: tcp-comm
      - name: http-dashboard
        port: 8787
        targetPort: http-dashboard
"""


def run(api, op, namespace, resource, selector, manifest, sizes):
    rows = []
    for n in sizes:
        pods = Pods(api, namespace, selector)
        cpu0 = op.sampler.cpu()
        op.sampler.peak = op.sampler.rss()
        t0 = time.monotonic()
        kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest(n))
        done = pods.wait_count(n, f"{n} worker pods of {op.name}")
        first = pods.first - t0
        cpu = op.sampler.cpu() - cpu0
        rows.append((op.name, n, first, done - t0, cpu, op.sampler.peak))
        print(
            f"  {op.name}: {n} workers in {done - t0:.2f} s "
            f"(first after {first:.2f} s), {cpu:.2f} CPU s, "
            f"{op.sampler.peak / 2**20:.0f} MiB peak",
            file=sys.stderr,
        )
        kubectl("delete", "-n", namespace, resource, "bench", "--wait=true", "--timeout=30m")
        pods.wait_count(0, f"the pods of {op.name} to be deleted")
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--sizes", default="1,100,1000")
    p.add_argument("--only", choices=["daskrs", "dask"])
    p.add_argument("--daskrs-operator", required=True)
    p.add_argument("--dask-kubernetes-version", required=True)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    config.load_kube_config()
    api = client.CoreV1Api()
    rows = []

    if a.only in (None, "daskrs"):
        kubectl("create", "namespace", "bench-daskrs")
        port = free_port()
        op = Operator(
            "daskrs-operator",
            [
                a.daskrs_operator,
                "--namespace=bench-daskrs",
                f"--metrics-addr=127.0.0.1:{port}",
                "--lease-namespace=bench-daskrs",
                "--identity=bench",
            ],
            {},
            f"http://127.0.0.1:{port}/metrics",
            "daskrs_operator_leader 1",
            os.path.join(a.work, "daskrs-operator.log"),
        )
        idle = op.sampler.rss()
        rows += run(
            api,
            op,
            "bench-daskrs",
            "daskclusters.daskrs.dev",
            "daskrs.dev/cluster=bench,daskrs.dev/role=worker",
            daskrs_manifest,
            sizes,
        )
        op.stop()
        print(f"  daskrs-operator idle: {idle / 2**20:.0f} MiB", file=sys.stderr)

    if a.only in (None, "dask"):
        kubectl("create", "namespace", "bench-dask")
        port = free_port()
        name = f"dask-kubernetes {a.dask_kubernetes_version}"
        op = Operator(
            name,
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "-m",
                "dask_kubernetes.operator.controller",
                "--standalone",
                "--namespace=bench-dask",
                f"--liveness=http://127.0.0.1:{port}/healthz",
            ],
            {},
            f"http://127.0.0.1:{port}/healthz",
            "now",
            os.path.join(a.work, "dask-kubernetes.log"),
        )
        rows += run(
            api,
            op,
            "bench-dask",
            "daskclusters.kubernetes.dask.org",
            "dask.org/cluster-name=bench,dask.org/component=worker",
            dask_manifest,
            sizes,
        )
        op.stop()

    print()
    print(
        "Operator: kubectl apply -> all worker pods created "
        "(real kube-apiserver + etcd + kube-controller-manager on loopback, no nodes)"
    )
    print(
        f"{'operator':<26} {'workers':>7} {'first pod s':>11} {'all pods s':>10} "
        f"{'pods/s':>8} {'CPU s':>7} {'peak RSS MiB':>12}"
    )
    for name, n, first, total, cpu, peak in rows:
        print(
            f"{name:<26} {n:>7} {first:>11.2f} {total:>10.2f} {n / total:>8.1f} "
            f"{cpu:>7.2f} {peak / 2**20:>12.0f}"
        )


if __name__ == "__main__":
    main()
