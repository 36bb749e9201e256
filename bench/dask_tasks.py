"""The daskrs task-throughput workloads run on Python Dask's LocalCluster.

Prints one JSON line: tasks, seconds and tasks/s for each shape.
- map: client.map(inc, range(n)), timed until every task has finished
  (distributed.wait), as the daskrs side is.
- tree: a binary-tree reduction over `leaves` leaf tasks, as one graph
  submitted with client.get, timed until its result is back.
"""

import argparse
import json
import os
import sys
import time
from operator import add

# Set before distributed is imported so the spawned worker processes, which
# configure their logging on import, inherit it too.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

import dask
import distributed
from distributed import Client, LocalCluster, wait


def inc(x):
    return x + 1


def run_map(client, n):
    t0 = time.perf_counter()
    futures = client.map(inc, range(n), pure=False)
    wait(futures)
    seconds = time.perf_counter() - t0
    del futures
    return n, seconds


def tree_graph(leaves, tag):
    dsk = {(f"leaf-{tag}", i): (inc, i) for i in range(leaves)}
    keys = [(f"leaf-{tag}", i) for i in range(leaves)]
    level = 0
    while len(keys) > 1:
        nxt = []
        for i in range(0, len(keys) - 1, 2):
            key = (f"add-{tag}-{level}", i // 2)
            dsk[key] = (add, keys[i], keys[i + 1])
            nxt.append(key)
        if len(keys) % 2:
            # The odd key out moves up a level as is, so there are leaves - 1 adds.
            nxt.append(keys[-1])
        keys = nxt
        level += 1
    return dsk, keys[0]


def run_tree(client, leaves, tag):
    dsk, root = tree_graph(leaves, tag)
    t0 = time.perf_counter()
    result = client.get(dsk, root)
    seconds = time.perf_counter() - t0
    assert result == sum(inc(i) for i in range(leaves)), result
    return len(dsk), seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--map-tasks", type=int, default=10_000)
    p.add_argument("--tree-leaves", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=1)
    # Dask's default (1.1) queues root tasks on the scheduler and hands them to
    # workers as slots free; "inf" turns that off, which helps tiny tasks.
    p.add_argument("--worker-saturation", default=None)
    a = p.parse_args()
    if a.worker_saturation is not None:
        dask.config.set({"distributed.scheduler.worker-saturation": float(a.worker_saturation)})
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        run_map(client, 200)
        run_tree(client, 200, "warm")
        best = {}
        for r in range(a.repeat):
            for name, (tasks, s) in (
                ("map", run_map(client, a.map_tasks)),
                ("tree", run_tree(client, a.tree_leaves, f"r{r}")),
            ):
                if name not in best or s < best[name]["seconds"]:
                    best[name] = {"tasks": tasks, "seconds": s, "tasks_per_s": tasks / s}
    best["dask_version"] = dask.__version__
    best["distributed_version"] = distributed.__version__
    best["worker_saturation"] = str(dask.config.get("distributed.scheduler.worker-saturation"))
    print(json.dumps(best))


if __name__ == "__main__":
    sys.exit(main())
