"""A notebook user's session on a Kubernetes cluster, from Python: run by
``client/tests/kube_python.rs`` against a real API server with the daskrs
chart installed, its operator running and a test node running the pods.

    python notebook.py MODE

MODE ``no-crd``, ``no-operator``, ``forbidden`` and ``bad-image`` each
expect ``KubeCluster`` to fail with the error that names the cause;
``notebook`` runs the session itself; ``example`` runs
``examples/kubernetes.ipynb`` in a Jupyter kernel and checks its outputs. Every check raises on a mismatch, so
the process exits non-zero; the Rust test reads the exit status and output.
Settings come from the environment: KUBECONFIG, E2E_NAMESPACE,
E2E_S3_ENDPOINT, E2E_S3_KEY, E2E_S3_SECRET, E2E_DATA_URL.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

t0 = time.monotonic()


def step(what: str) -> None:
    print(f"notebook: {time.monotonic() - t0:6.1f}s {what}", flush=True)


def expect_failure(words: str, **kwargs: object) -> None:
    import daskrs

    try:
        cluster = daskrs.KubeCluster(namespace=os.environ["E2E_NAMESPACE"], quiet=True, **kwargs)
    except daskrs.KubeError as e:
        if words not in str(e):
            raise AssertionError(f"expected an error saying {words!r}, got: {e}") from e
        print(f"refused as expected: {e}")
        return
    cluster.close()
    raise AssertionError(f"KubeCluster({kwargs}) started; expected an error saying {words!r}")


def notebook() -> None:
    import cloudpickle
    import dask.array as da
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    import daskrs

    # Functions of this file travel by value, as a notebook's do.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ns = os.environ["E2E_NAMESPACE"]
    data = os.environ["E2E_DATA_URL"]
    storage = {
        "key": os.environ["E2E_S3_KEY"],
        "secret": os.environ["E2E_S3_SECRET"],
        "client_kwargs": {
            "endpoint_url": os.environ["E2E_S3_ENDPOINT"],
            "region_name": "us-east-1",
        },
    }

    start = time.monotonic()
    cluster = daskrs.KubeCluster(
        "notebook",
        namespace=ns,
        n_workers=2,
        threads_per_worker=1,
        env={"DASKRS_LOG": "info"},
        s3={
            "endpoint": os.environ["E2E_S3_ENDPOINT"],
            "region": "us-east-1",
            "credentials_secret": "s3-credentials",
        },
    )
    client = daskrs.Client(cluster)
    step(f"KubeCluster(n_workers=2) to a ready client: {time.monotonic() - start:.2f} s")
    assert cluster.scheduler_address.startswith("127.0.0.1:"), cluster.scheduler_address
    assert len(client.scheduler_info()["workers"]) == 2
    assert client.dashboard_link == cluster.dashboard_link
    # The dashboard, through the second port forward: the link's token
    # logs in with a cookie, as in a browser.
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with browser.open(cluster.dashboard_link, timeout=30) as r:
        page = r.read().decode()
    assert r.status == 200 and "daskrs" in page, page[:200]
    shown = cluster._repr_html_()
    assert "notebook" in shown and "2 ready of 2" in shown and "Dashboard" in shown, shown

    # A dask.array reduction, answered as the local scheduler answers it.
    x = da.random.RandomState(7).random_sample((2000, 2000), chunks=500)
    total = x.sum().compute()
    assert np.isclose(total, x.sum().compute(scheduler="sync")), total
    step("dask.array reduction")

    # A dask.dataframe groupby over Parquet in S3 (MinIO), read by the
    # workers, answered as pandas answers it here.
    columns = ["l_returnflag", "l_linenumber", "l_orderkey"]
    df = dd.read_parquet(f"{data}/lineitem/", columns=columns, storage_options=storage)
    got = df.groupby("l_returnflag").agg({"l_linenumber": "sum", "l_orderkey": "count"}).compute()
    local = pd.read_parquet(f"{data}/lineitem/", columns=columns, storage_options=storage)
    want = local.groupby("l_returnflag").agg({"l_linenumber": "sum", "l_orderkey": "count"})
    assert len(want) == 3, want
    pd.testing.assert_frame_equal(
        got.sort_index().astype("int64"), want.sort_index().astype("int64"), check_names=False
    )
    step("dask.dataframe groupby over Parquet in S3")

    # SQL over the same data, read by the workers with the cluster's S3
    # settings (the spec's endpoint and Secret).
    answer = client.sql(
        f"SELECT l_returnflag, count(*) AS n, sum(l_linenumber) AS s "
        f"FROM '{data}/lineitem/' GROUP BY l_returnflag ORDER BY l_returnflag"
    ).to_pandas()
    assert list(answer["n"]) == list(want.sort_index()["l_orderkey"]), answer
    assert list(answer["s"]) == list(want.sort_index()["l_linenumber"]), answer
    step("client.sql")

    # Results persisted on the workers survive scaling up and down: the
    # workers that leave hand theirs to those that stay.
    kept = x.persist()
    daskrs.wait(kept)
    cluster.scale(3)
    cluster.wait_for_workers(3)
    wait_until(
        lambda: len(client.scheduler_info()["workers"]) == 3, "the scheduler to know 3 workers"
    )
    step("scaled to 3")
    cluster.adapt(1, 3)
    cluster.refresh()
    assert cluster.spec["autoscaling"] == {"minReplicas": 1, "maxReplicas": 3}, cluster.spec
    cluster.scale(1)
    cluster.refresh()
    assert "autoscaling" not in cluster.spec and cluster.spec["worker"]["replicas"] == 1, (
        cluster.spec
    )
    cluster.wait_for_workers(1)
    wait_until(
        lambda: len(client.scheduler_info()["workers"]) == 1, "the scheduler to know 1 worker"
    )
    step("scaled to 1")
    assert np.isclose(kept.sum().compute(), total)
    assert np.array_equal(kept.compute(), x.compute(scheduler="sync"))
    step("persisted results survived the scale-down")

    # Another session attaches by name and leaves the cluster running.
    other = daskrs.KubeCluster.from_name("notebook", namespace=ns, quiet=True)
    with daskrs.Client(other, set_as_default=False) as c2:
        assert len(c2.scheduler_info()["workers"]) == 1
    other.close()
    assert cluster.refresh()["phase"] == "Running"
    step("attached by name, and left running")

    logs = cluster.get_logs()
    scheduler_logs = [text for name, text in logs.items() if "-scheduler-" in name]
    assert len(logs) == 2 and scheduler_logs and scheduler_logs[0].strip(), logs
    step("logs of the scheduler and the worker")

    client.close()
    cluster.close()
    step("closed")


def example() -> None:
    """examples/kubernetes.ipynb, top to bottom in a real Jupyter kernel,
    with the kubeconfig's context naming the namespace."""
    import re
    from pathlib import Path

    import nbclient
    import nbformat

    path = Path(__file__).resolve().parents[3] / "examples" / "kubernetes.ipynb"
    nb = nbformat.read(path, as_version=4)
    # Raises on the first cell that fails.
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    code = [c for c in nb.cells if c.cell_type == "code"]

    def text(cell: dict) -> str:
        parts = []
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/html", ""), data.get("text/plain", "")]
        return "".join(parts)

    # The progress line, updated in place to its last state, then the
    # cluster's HTML view with its dashboard link.
    first = text(code[0])
    assert "DaskCluster notebooks/notebook-demo: running, 2 workers ready" in first, first
    assert "daskrs.KubeCluster" in first and "?token=" in first, first
    assert "2 workers" in text(code[1]), text(code[1])
    total, sync = re.search(r"array total ([\d.]+), sync ([\d.]+)", text(code[2])).groups()  # type: ignore[union-attr]
    assert total == sync, (total, sync)
    assert "workers: 3" in text(code[3]), text(code[3])
    assert "workers: 1" in text(code[4]), text(code[4])
    step("examples/kubernetes.ipynb ran top to bottom")


def wait_until(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def main() -> None:
    mode = sys.argv[1]
    if mode == "no-crd":
        expect_failure("no DaskCluster resource", name="early")
    elif mode == "no-operator":
        expect_failure("no operator acted", name="unwatched", operator_timeout=5)
    elif mode == "forbidden":
        expect_failure("forbidden", name="denied")
    elif mode == "bad-image":
        expect_failure("cannot pull its image", name="broken", image="registry.invalid/none:1")
    elif mode == "notebook":
        notebook()
    elif mode == "example":
        example()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
