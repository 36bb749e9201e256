"""The Python package's workloads on daskrs and on distributed, in one run.

Both clusters are two worker processes of one thread each on this machine:
``daskrs.Client(n_workers=2, threads_per_worker=1)`` and
``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``, from the
same interpreter and packages. One cluster runs at a time.

Workloads (best of --repeat):
- submit: 10 000 ``client.submit(inc, i)`` one by one, then ``gather``;
- map: ``client.map(inc, range(10 000))``, then ``gather``;
- array: ``(x + x.T).sum()`` over a dask.array of small chunks (about
  30 000 tasks);
- groupby: a dask.dataframe groupby-aggregation over TPC-H lineitem
  (--lineitem, a directory of Parquet files), when given.

Prints a table: seconds and tasks/s for each side, and the ratio; then the
peak resident memory of the workers (and daskrs's executors).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402


def inc(x: int) -> int:
    return x + 1


def w_submit(client, n):  # type: ignore[no-untyped-def]
    futures = [client.submit(inc, i, pure=False) for i in range(n)]
    got = client.gather(futures)
    assert got[-1] == n
    return n


def w_map(client, n):  # type: ignore[no-untyped-def]
    futures = client.map(inc, range(n), pure=False)
    got = client.gather(futures)
    assert got[-1] == n
    return n


def array_expr(side: int, chunk: int):  # type: ignore[no-untyped-def]
    x = da.ones((side, side), chunks=chunk)
    return (x + x.T).sum()


def w_array(client, side, chunk):  # type: ignore[no-untyped-def]
    expr = array_expr(side, chunk)
    tasks = len(expr.__dask_graph__())
    assert expr.compute(scheduler=client) == 2 * side * side
    return tasks


def w_groupby(client, lineitem):  # type: ignore[no-untyped-def]
    df = dd.read_parquet(lineitem, columns=["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice"])
    # The generator writes decimals; pandas' mean of Arrow decimals overflows
    # their precision, on any scheduler.
    df = df.astype({"l_quantity": "float64", "l_extendedprice": "float64"})
    out = (
        df.groupby(["l_returnflag", "l_linestatus"])
        .agg({"l_quantity": "sum", "l_extendedprice": "mean"})
        .compute(scheduler=client)
    )
    assert len(out) > 0
    return len(df.__dask_graph__())


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    """Every descendant of `pid`, whichever of its threads started it."""
    out = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for k in kids:
            out.append(k)
            out.extend(children(k))
    return out


def _held_by_distributed(dask_scheduler) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for ts in dask_scheduler.tasks.values() if ts.state != "released")


def settle(client, side: str) -> None:  # type: ignore[no-untyped-def]
    """Waits until the cluster holds nothing: the keys of a dask graph are
    the same on each repeat, and a result not yet let go of from the last
    one would be taken instead of computed."""
    deadline = time.monotonic() + 60
    while True:
        if side == "daskrs":
            held = sum(client.scheduler_info()["tasks"].values())
        else:
            held = client.run_on_scheduler(_held_by_distributed)
        if held == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side} still holds {held} tasks a minute after a workload")
        time.sleep(0.05)


def run(side: str, args: argparse.Namespace) -> dict[str, object]:
    if side == "daskrs":
        import daskrs

        client = daskrs.Client(n_workers=2, threads_per_worker=1, set_as_default=False)
    else:
        import distributed

        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = distributed.Client(cluster, set_as_default=False)
    workloads = [
        ("submit", lambda: w_submit(client, args.tasks)),
        ("map", lambda: w_map(client, args.tasks)),
        ("array", lambda: w_array(client, args.side, args.chunk)),
    ]
    if args.lineitem:
        workloads.append(("groupby", lambda: w_groupby(client, args.lineitem)))
    results: dict[str, object] = {}
    try:
        for name, fn in workloads:
            best = None
            tasks = 0
            for _ in range(args.repeat):
                gc.collect()
                settle(client, side)
                t0 = time.perf_counter()
                tasks = fn()
                seconds = time.perf_counter() - t0
                best = seconds if best is None else min(best, seconds)
            results[name] = {"tasks": tasks, "seconds": best}
            print(f"{side} {name}: {tasks} tasks, best {best:.3f} s", file=sys.stderr, flush=True)
        pids = children(os.getpid())
        results["memory"] = rss_of(pids)
    finally:
        client.close()
        if side == "distributed":
            cluster.close()
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--side", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=20)
    p.add_argument("--lineitem", default="")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    ours = run("daskrs", args)
    theirs = run("distributed", args)
    if args.json:
        print(json.dumps({"daskrs": ours, "distributed": theirs}))
        return
    print(f"dask {dask.__version__}, Python {sys.version.split()[0]}, best of {args.repeat}")
    print(f"{'workload':<10}{'tasks':>8}{'daskrs s':>11}{'task/s':>10}{'dask s':>10}{'task/s':>10}{'speed-up':>10}")
    for name in ("submit", "map", "array", "groupby"):
        if name not in ours:
            continue
        a, b = ours[name], theirs[name]  # type: ignore[index]
        print(
            f"{name:<10}{a['tasks']:>8}{a['seconds']:>11.3f}{a['tasks'] / a['seconds']:>10.0f}"
            f"{b['seconds']:>10.3f}{b['tasks'] / b['seconds']:>10.0f}{b['seconds'] / a['seconds']:>9.1f}x"
        )
    mib = 1 << 20
    print(
        f"peak RSS of the cluster's processes: daskrs {ours['memory'] / mib:.0f} MiB "
        f"(scheduler, workers, executors), distributed {theirs['memory'] / mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
