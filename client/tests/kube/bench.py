"""Time from ``KubeCluster(...)`` to a client whose cluster has all its
workers, and from ``close()`` to nothing left, for one cluster size: run by
``client/tests/kube_bench.rs`` (``bench/kube.sh``).

    python bench.py daskrs|dask-kubernetes N

Prints one line of JSON: {"system", "workers", "ready_s", "close_s",
"close_returned_s"}, and for dask-kubernetes "stuck_starts", the starts that
its operator left Pending (tried again, not timed). "Nothing left" is the
same for both: the DaskCluster and every pod of the cluster gone from the
API server (a pod is gone once the test node has seen its process exit);
"close_returned_s" is when ``close()`` returned: daskrs's once the
DaskCluster and its pods are gone, dask-kubernetes' once the DaskCluster is
gone.
Settings from the environment: KUBECONFIG, E2E_NAMESPACE.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

TIMEOUT = 600


def wait_pods_gone(namespace: str, selector: dict[str, str], since: float) -> None:
    """Polls until no pod matches ``selector``."""
    import kr8s

    while list(kr8s.get("pods", namespace=namespace, label_selector=selector)):
        if time.monotonic() - since > TIMEOUT:
            raise TimeoutError(f"pods {selector} still there after {TIMEOUT} s")
        time.sleep(0.1)


def use_and_close(
    start: float, cluster: Any, client: Any, n: int, namespace: str, selector: dict[str, str]
) -> dict[str, float]:
    """The same for both systems, from a cluster started at ``start``:
    ready once the client has ``n`` workers and ran a task; closed once
    ``close()`` has returned and no pod of the cluster is left."""
    client.wait_for_workers(n, timeout=TIMEOUT)
    assert client.submit(sum, [1, 2]).result() == 3
    ready = time.monotonic() - start
    client.close()
    start = time.monotonic()
    cluster.close(timeout=TIMEOUT)
    closed = time.monotonic() - start
    wait_pods_gone(namespace, selector, start)
    return {"ready_s": ready, "close_s": time.monotonic() - start, "close_returned_s": closed}


def daskrs_cluster(n: int, namespace: str) -> dict[str, float]:
    import daskrs

    start = time.monotonic()
    name = f"bench-{n}"
    cluster = daskrs.KubeCluster(name, namespace=namespace, n_workers=n, quiet=True)
    client = daskrs.Client(cluster, set_as_default=False)
    return use_and_close(start, cluster, client, n, namespace, {"daskrs.dev/cluster": name})


def dask_kubernetes_cluster(n: int, namespace: str) -> dict[str, float]:
    import distributed
    from dask_kubernetes.operator import KubeCluster, make_cluster_spec
    from distributed import Client

    name = f"dkbench-{n}"
    selector = {"dask.org/cluster-name": name}

    # KubeCluster's own spec, with the image of the distributed this venv
    # has (the client's). One change that means the same in a pod: the
    # scheduler's dashboard address, by default ":8787" (every interface),
    # spelled 0.0.0.0:8787, which the test node maps to the pod's address as
    # a pod's network namespace would; pods here share the machine's
    # interfaces, where the Service's own listener holds that port.
    image = f"ghcr.io/dask/dask:{distributed.__version__}"
    spec = make_cluster_spec(name, image=image, n_workers=n)
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler["args"] += ["--dashboard-address", "0.0.0.0:8787"]

    # The operator may leave a cluster Pending for good: its handler for the
    # scheduler's Service sets Running while the one creating the components
    # is still at work, and that one then writes Pending over it
    # (dask/dask-kubernetes#968, fixed after 2026.3.0). KubeCluster gives up
    # after 60 s and deletes the cluster; such a start is counted and tried
    # again.
    stuck = 0
    while True:
        start = time.monotonic()
        try:
            # Outside the cluster: the scheduler's ports forwarded through
            # the API server, as daskrs does there (without it, KubeCluster
            # first tries to resolve the Service's name, 20 times 0.5 s
            # apart, for each port).
            cluster = KubeCluster(
                custom_cluster_spec=spec,
                namespace=namespace,
                port_forward_cluster_ip=True,
                quiet=True,
            )
            break
        except Exception as e:
            if "not actioned" not in str(e) or stuck == 2:
                raise
            stuck += 1
            print(f"{name}: {e}; again", file=sys.stderr)
            wait_pods_gone(namespace, selector, time.monotonic())
    # Its close() returns once the DaskCluster is gone; the garbage
    # collector then deletes its Deployments, their ReplicaSets and pods.
    client = Client(cluster, set_as_default=False)
    times = use_and_close(start, cluster, client, n, namespace, selector)
    return {**times, "stuck_starts": stuck}


def main() -> None:
    system, n = sys.argv[1], int(sys.argv[2])
    namespace = os.environ["E2E_NAMESPACE"]
    run = {"daskrs": daskrs_cluster, "dask-kubernetes": dask_kubernetes_cluster}[system]
    times = run(n, namespace)
    print(json.dumps({"system": system, "workers": n, **times}), flush=True)


if __name__ == "__main__":
    main()
