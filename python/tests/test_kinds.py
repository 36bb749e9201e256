"""Workers that cannot run Python say so; Python tasks wait for one that can."""

from __future__ import annotations

import threading
import time

import dask

import daskrs
from conftest import start_worker


def _double(v: int) -> int:
    return 2 * v


def test_python_tasks_wait_for_a_python_worker_and_say_why(daskrs_bin: str) -> None:
    cluster = daskrs.LocalCluster(n_workers=0)
    plain = start_worker(daskrs_bin, cluster.scheduler_address, "plain", token=cluster.token)
    try:
        client = daskrs.Client(cluster.scheduler_address, set_as_default=False)
        client.wait_for_workers(1, timeout=30)
        (worker,) = client.scheduler_info()["workers"]
        assert worker["name"] == "plain" and "python" not in worker["kinds"]

        result: dict[str, object] = {}
        x = dask.delayed(_double)(21)
        thread = threading.Thread(target=lambda: result.update(v=x.compute(scheduler=client)))
        thread.start()
        deadline = time.monotonic() + 30
        while client.scheduler_info()["no_worker"].get("python") != 1:
            assert time.monotonic() < deadline, client.scheduler_info()
            assert thread.is_alive(), result
            time.sleep(0.05)

        cluster.add_worker()
        thread.join(timeout=60)
        assert result == {"v": 42}
        assert client.scheduler_info()["no_worker"] == {}
        client.close()
    finally:
        plain.terminate()
        plain.wait()
        cluster.close()
