"""What a user's code or the cluster can break, and what still works."""

from __future__ import annotations

import os
import signal
import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest

import daskrs


def slow_square(x: np.ndarray) -> np.ndarray:
    time.sleep(0.05)
    return x * x


def test_worker_killed_mid_array_reduction_still_right() -> None:
    with daskrs.Client(n_workers=2, set_as_default=False) as client:
        assert client.cluster is not None
        x = da.arange(4000, chunks=50).map_blocks(slow_square, dtype="int64")
        total = x.sum()
        want = int((np.arange(4000) ** 2).sum())
        result: dict[str, object] = {}
        runner = threading.Thread(
            target=lambda: result.update(v=total.compute(scheduler=client))
        )
        runner.start()
        # Kill a worker once it is working, with results of its own held.
        deadline = time.monotonic() + 60
        while True:
            workers = client.scheduler_info()["workers"]
            if any(w["held_results"] > 0 and w["name"] == "local-1" for w in workers):
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.01)
        client.cluster.processes[1].send_signal(signal.SIGKILL)
        runner.join(timeout=120)
        assert not runner.is_alive()
        assert result == {"v": want}
        names = [w["name"] for w in client.scheduler_info()["workers"]]
        assert names == ["local-2"]


def test_keyboard_interrupt_cancels_the_graph(client: daskrs.Client) -> None:
    def nap(i: int) -> int:
        time.sleep(30)
        return i

    parts = [dask.delayed(nap)(i, dask_key_name=f"nap-{i}") for i in range(6)]
    # A shell that starts the tests in the background has them ignore
    # SIGINT, and Python then raises nothing on it: Ctrl-C acts here as in
    # a terminal or a notebook, however the tests were started.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            dask.compute(*parts, scheduler=client)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    # Nothing of it is left on the cluster, running or queued.
    deadline = time.monotonic() + 20
    while True:
        tasks = client.scheduler_info()["tasks"]
        if all(tasks.get(s, 0) == 0 for s in ("processing", "queued", "waiting")):
            break
        assert time.monotonic() < deadline, tasks
        time.sleep(0.05)
    assert client.submit(abs, -3).result(timeout=20) == 3


def hold_memory(nbytes: int, seconds: float) -> int:
    import numpy as np

    block = np.ones(nbytes, dtype="uint8")
    time.sleep(seconds)
    return int(block[:10].sum())


def test_python_memory_counts_toward_the_workers_limit_and_pauses_it() -> None:
    # 1720 MiB of numpy plus the processes' own pages: past the pause
    # threshold (80% of 2 GiB, 1638 MiB), and over 200 MiB short of the one
    # at which the worker stops the task's process (95%, 1946 MiB).
    limit = 2 << 30
    block = 1720 << 20
    with daskrs.Client(n_workers=1, memory_limit=limit, set_as_default=False) as client:
        f = client.submit(hold_memory, block, 4.0)
        deadline = time.monotonic() + 60
        # The worker pauses once the task's pages pass its threshold; it goes
        # on reporting them while numpy fills the rest of the block.
        while True:
            (w,) = client.scheduler_info()["workers"]
            if w["status"] == "paused" and w["memory_bytes"] > block:
                break
            assert not f.done(), f"the task ended before the worker paused with its block: {w}"
            assert time.monotonic() < deadline, w
            time.sleep(0.05)
        assert f.result(timeout=60) == 10
        # The memory is given back; the worker takes work again.
        assert client.submit(abs, -1).result(timeout=60) == 1


def grow_until_stopped(step: int, most: int) -> int:
    import numpy as np

    blocks = []
    while len(blocks) * step < most:
        blocks.append(np.ones(step, dtype="uint8"))
        time.sleep(0.01)
    return len(blocks)


def test_a_task_that_exhausts_memory_costs_its_executor_not_the_worker() -> None:
    with daskrs.Client(n_workers=1, memory_limit=400 << 20, set_as_default=False) as client:
        kept = client.submit(lambda: list(range(1000)))
        assert kept.result(timeout=60)[-1] == 999
        f = client.submit(grow_until_stopped, 32 << 20, 4 << 30, retries=1, key="greedy")
        with pytest.raises(daskrs.TaskFailed) as e:
            f.result(timeout=120)
        message = str(e.value)
        assert "'greedy'" in message and "'local-1'" in message, message
        assert "SIGKILL" in message and "400.0 MiB memory limit" in message, message
        # The worker and the result it held are still there.
        assert [w["name"] for w in client.scheduler_info()["workers"]] == ["local-1"]
        assert kept.result(timeout=60)[-1] == 999
        assert client.submit(abs, -2).result(timeout=60) == 2


def test_futures_lost_with_their_worker_are_computed_again() -> None:
    def inc(x: int) -> int:
        return x + 1

    with daskrs.Client(n_workers=2, set_as_default=False) as client:
        assert client.cluster is not None
        fs = client.map(inc, range(40), pure=False)
        daskrs.wait(fs)
        held = {w["name"]: w["held_results"] for w in client.scheduler_info()["workers"]}
        assert held["local-1"] > 0, held
        client.cluster.processes[1].send_signal(signal.SIGKILL)
        assert client.gather(fs) == list(range(1, 41))
        assert [w["name"] for w in client.scheduler_info()["workers"]] == ["local-2"]
