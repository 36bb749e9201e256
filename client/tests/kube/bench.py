"""Time from ``KubeCluster(...)`` to a client whose cluster has all its
workers, and from ``close()`` to nothing left, for one cluster size: run by
``client/tests/kube_bench.rs`` (``bench/kube.sh``).

    python bench.py daskrs|dask-kubernetes N

Prints one line of JSON: {"system", "workers", "ready_s", "close_s"}.
Settings from the environment: KUBECONFIG, E2E_NAMESPACE.
"""

from __future__ import annotations

import json
import os
import sys
import time


def daskrs_cluster(n: int, namespace: str) -> tuple[float, float]:
    import daskrs

    start = time.monotonic()
    cluster = daskrs.KubeCluster(f"bench-{n}", namespace=namespace, n_workers=n, quiet=True)
    client = daskrs.Client(cluster, set_as_default=False)
    client.wait_for_workers(n, timeout=600)
    assert client.submit(sum, [1, 2]).result() == 3
    ready = time.monotonic() - start
    client.close()
    start = time.monotonic()
    cluster.close(timeout=600)
    return ready, time.monotonic() - start


def dask_kubernetes_cluster(n: int, namespace: str) -> tuple[float, float]:
    from dask_kubernetes.operator import KubeCluster
    from distributed import Client

    start = time.monotonic()
    cluster = KubeCluster(name=f"dkbench-{n}", namespace=namespace, n_workers=n, quiet=True)
    client = Client(cluster)
    client.wait_for_workers(n, timeout=600)
    assert client.submit(sum, [1, 2]).result() == 3
    ready = time.monotonic() - start
    client.close()
    start = time.monotonic()
    cluster.close()
    return ready, time.monotonic() - start


def main() -> None:
    system, n = sys.argv[1], int(sys.argv[2])
    namespace = os.environ["E2E_NAMESPACE"]
    run = {"daskrs": daskrs_cluster, "dask-kubernetes": dask_kubernetes_cluster}[system]
    ready, closed = run(n, namespace)
    print(json.dumps({"system": system, "workers": n, "ready_s": ready, "close_s": closed}), flush=True)


if __name__ == "__main__":
    main()
