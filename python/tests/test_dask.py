"""Dask collections computed on daskrs give what Dask's own synchronous
scheduler gives on the same code."""

from __future__ import annotations

import operator
from pathlib import Path

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import daskrs


def inc(x: int) -> int:
    return x + 1


def test_delayed_on_the_cluster_equals_sync(client: daskrs.Client) -> None:
    parts = [dask.delayed(inc)(i) for i in range(20)]
    total = dask.delayed(sum)(parts)
    both = dask.delayed(operator.mul)(total, parts[3])
    (got,) = dask.compute(both, scheduler=client)
    (want,) = dask.compute(both, scheduler="sync")
    assert got == want == (sum(range(1, 21)) * 4)


def test_array_reduction_and_transpose_equal_sync(client: daskrs.Client) -> None:
    x = da.random.default_rng(42).random((600, 600), chunks=(100, 100))
    expr = (x + x.T).sum(axis=0)[::7].std() + x.mean()
    got = expr.compute(scheduler=client)
    want = expr.compute(scheduler="sync")
    assert got == pytest.approx(want, rel=1e-12)


def test_array_results_come_back_as_numpy(client: daskrs.Client) -> None:
    x = da.arange(10_000, chunks=1000).reshape(100, 100)
    got = (x @ x.T)[:10, :10].compute(scheduler=client)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, (x @ x.T)[:10, :10].compute(scheduler="sync"))


def test_bag_fold_and_frequencies_equal_sync(client: daskrs.Client) -> None:
    b = db.from_sequence(range(1000), npartitions=10).map(lambda v: v % 13)
    assert b.frequencies().compute(scheduler=client) == b.frequencies().compute(scheduler="sync")
    assert b.fold(operator.add).compute(scheduler=client) == sum(v % 13 for v in range(1000))


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "key": rng.integers(0, 50, n),
            "value": rng.random(n),
            "name": rng.choice(["a", "b", "c", "d"], n),
        }
    )


def test_dataframe_groupby_merge_and_shuffle_equal_sync(client: daskrs.Client) -> None:
    left = dd.from_pandas(_frame(5000, 1), npartitions=8)
    right = dd.from_pandas(_frame(200, 2).drop_duplicates("key"), npartitions=3)
    merged = left.merge(right, on="key", suffixes=("", "_r"))
    by = merged.groupby("name").agg({"value": "sum", "value_r": "mean", "key": "count"})
    shuffled = left.shuffle("key").map_partitions(len)

    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        got_by, got_lens = dask.compute(by, shuffled, scheduler=client)
        want_by, want_lens = dask.compute(by, shuffled, scheduler="sync")
    pd.testing.assert_frame_equal(got_by.sort_index(), want_by.sort_index())
    assert got_lens.sum() == want_lens.sum() == 5000


def test_read_parquet_from_a_local_directory(client: daskrs.Client, tmp_path: Path) -> None:
    for i in range(4):
        _frame(500, 10 + i).to_parquet(tmp_path / f"part-{i}.parquet")
    df = dd.read_parquet(str(tmp_path))
    expr = df.groupby("name")["value"].sum()
    pd.testing.assert_series_equal(
        expr.compute(scheduler=client).sort_index(), expr.compute(scheduler="sync").sort_index()
    )


def _pid() -> int:
    import os

    return os.getpid()


def test_the_client_is_dasks_default_scheduler(client: daskrs.Client) -> None:
    import os

    assert dask.config.get("scheduler") is client
    assert da.ones((100, 100), chunks=10).sum().compute() == 10_000
    # Run by another process: an executor of a worker, not this one.
    assert dask.delayed(_pid)().compute() != os.getpid()


def test_an_exception_in_user_code_names_its_type_message_and_traceback(
    client: daskrs.Client,
) -> None:
    def explode(v: int) -> int:
        raise ValueError(f"bad value {v}")

    x = dask.delayed(explode)(7, dask_key_name="explode-7")
    with pytest.raises(ValueError, match="^bad value 7$") as info:
        x.compute(scheduler=client)
    remote = str(info.value.__cause__)
    assert "task 'explode-7' on worker 'local-" in remote
    assert "in explode" in remote  # the remote traceback
    assert "ValueError: bad value 7" in remote


def test_an_exception_that_cannot_travel_back_fails_with_its_text(client: daskrs.Client) -> None:
    def unpicklable() -> None:
        import threading

        class Holds(Exception):
            def __reduce__(self):  # type: ignore[override]
                raise TypeError("no")

        raise Holds(threading.Lock())

    with pytest.raises(daskrs.TaskFailed, match="Holds") as info:
        dask.delayed(unpicklable)(dask_key_name="unpicklable").compute(scheduler=client)
    assert info.value.key == "unpicklable"


def test_an_unpicklable_task_is_refused_at_submit_naming_it(client: daskrs.Client) -> None:
    import threading

    lock = threading.Lock()
    x = dask.delayed(lambda lk: 1)(lock, dask_key_name="holds-a-lock")
    with pytest.raises(TypeError, match="holds-a-lock.*does not pickle"):
        x.compute(scheduler=client)


def test_a_task_that_kills_its_process_fails_with_the_exit_and_the_worker_serves_on(
    client: daskrs.Client,
) -> None:
    def die() -> None:
        import os

        os._exit(3)

    with pytest.raises(daskrs.TaskFailed, match="exited with status 3"):
        dask.delayed(die)(dask_key_name="dies").compute(scheduler=client)
    assert dask.delayed(inc)(1).compute(scheduler=client) == 2


def _batches_run(client: daskrs.Client) -> int:
    """Jobs of several tasks the client's local workers have run."""
    import urllib.request

    assert client.cluster is not None
    total = 0
    for link in client.cluster.worker_links.values():
        request = urllib.request.Request(
            link + "metrics", headers={"Authorization": f"Bearer {client.cluster.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as page:
            for line in page.read().decode().splitlines():
                if line.startswith("daskrs_worker_task_batches_total"):
                    total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_tasks_of_a_batch_fail_alone_when_one_raises_or_ends_its_process(
    client: daskrs.Client,
) -> None:
    def odd(i: int) -> int:
        if i == 150:
            import os

            os._exit(7)
        if i == 100:
            raise ValueError(f"no {i}")
        return 2 * i

    # Short tasks, once seen to be short, go to the executors in batches.
    before = _batches_run(client)
    assert client.gather(client.map(inc, range(400), pure=False)) == list(range(1, 401))
    futures = client.map(odd, range(300), pure=False)
    daskrs.wait(futures, timeout=120)
    assert _batches_run(client) > before
    for i, f in enumerate(futures):
        if i == 100:
            with pytest.raises(ValueError, match="no 100"):
                f.result()
        elif i == 150:
            with pytest.raises(daskrs.TaskFailed, match="exited with status 7"):
                f.result()
        else:
            assert f.result() == 2 * i, i


def test_a_segfault_in_user_code_names_the_signal_and_costs_no_results(
    client: daskrs.Client,
) -> None:
    kept = client.get({"kept": (inc, 41)}, "kept")

    def segfault() -> None:
        import ctypes

        ctypes.string_at(0)

    with pytest.raises(daskrs.TaskFailed, match=r"signal 11 \(SIGSEGV\)"):
        dask.delayed(segfault)(dask_key_name="segv").compute(scheduler=client)
    assert kept == 42
    assert len(client.scheduler_info()["workers"]) == 2


def test_a_module_the_workers_lack_is_named_in_the_error(
    client: daskrs.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "only_on_the_client.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_the_client  # type: ignore[import-not-found]

    x = dask.delayed(only_on_the_client.f)(1, dask_key_name="needs-a-module")
    with pytest.raises(ModuleNotFoundError, match="needs module 'only_on_the_client'") as info:
        x.compute(scheduler=client)
    assert "needs-a-module" in str(info.value.__cause__)
