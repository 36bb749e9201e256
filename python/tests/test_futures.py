"""Futures as in ``distributed``: submit, map, gather, scatter, cancel,
wait, as_completed; results held on the workers while referenced."""

from __future__ import annotations

import gc
import operator
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeoutError

import dask
import dask.array as da
import numpy as np
import pytest

import daskrs


def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


def slow_inc(x: int, delay: float = 0.3) -> int:
    time.sleep(delay)
    return x + 1


def held(client: daskrs.Client) -> int:
    """Results the workers hold, as the scheduler counts them."""
    return sum(w["held_results"] for w in client.scheduler_info()["workers"])


def wait_until(cond, timeout: float = 30.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what or "condition not met"
        time.sleep(0.02)


def test_submit_runs_on_the_cluster_and_result_fetches_the_value(client: daskrs.Client) -> None:
    f = client.submit(inc, 41)
    assert isinstance(f, daskrs.Future)
    assert f.result(timeout=30) == 42
    assert f.done() and f.status == "finished" and f.exception() is None
    assert "finished" in repr(f) and f.key.startswith("inc-")


def test_the_same_call_is_one_key_unless_impure(client: daskrs.Client) -> None:
    a, b = client.submit(inc, 1), client.submit(inc, 1)
    c = client.submit(inc, 1, pure=False)
    assert a.key == b.key != c.key
    assert client.gather([a, b, c]) == [2, 2, 2]


def test_map_gather_keep_order_and_structure(client: daskrs.Client) -> None:
    fs = client.map(inc, range(100))
    assert len(fs) == 100
    assert client.gather(fs) == list(range(1, 101))
    total = client.submit(add, *fs[:10])
    assert client.gather({"t": total, "pair": (fs[0], [fs[1]]), "plain": 5}) == {
        "t": sum(range(1, 11)),
        "pair": (1, [2]),
        "plain": 5,
    }
    assert client.gather(client.map(operator.add, [1, 2], [10, 20])) == [11, 22]


def test_futures_as_arguments_also_inside_lists_tuples_and_dicts(client: daskrs.Client) -> None:
    x = client.submit(inc, 1)
    y = client.submit(inc, 2)

    def combine(items: list[int], pair: tuple[int, int], named: dict[str, int]) -> int:
        return sum(items) * 100 + pair[0] * 10 + named["z"]

    z = client.submit(combine, [x, y], (x, 0), {"z": y})
    assert z.result() == (2 + 3) * 100 + 2 * 10 + 3


def test_futures_inside_dask_collections(client: daskrs.Client) -> None:
    x = client.submit(inc, 9)
    d = dask.delayed(operator.mul)(x, 3)
    assert d.compute() == 30
    arr = client.submit(np.arange, 12)
    doubled = dask.delayed(lambda a: a * 2)(arr)
    np.testing.assert_array_equal(doubled.compute(), np.arange(12) * 2)


def test_scatter_sends_data_and_tasks_use_it(client: daskrs.Client) -> None:
    data = np.arange(1_000_000, dtype="float64")
    f = client.scatter(data)
    assert f.result().sum() == data.sum()
    assert client.submit(np.sum, f).result() == data.sum()
    listed = client.scatter([1, 2, 3])
    assert isinstance(listed, list) and client.gather(listed) == [1, 2, 3]
    named = client.scatter({"a": 1, "b": "two"})
    assert set(named) == {"a", "b"} and named["b"].result() == "two"


def test_result_with_timeout_raises_timeout_error(client: daskrs.Client) -> None:
    f = client.submit(slow_inc, 1, 2.0, pure=False)
    with pytest.raises(FuturesTimeoutError):
        f.result(timeout=0.05)
    assert f.result(timeout=30) == 2


def test_exception_and_result_of_a_failing_task(client: daskrs.Client) -> None:
    def boom(x: int) -> int:
        raise ZeroDivisionError(f"no {x}")

    f = client.submit(boom, 3)
    after = client.submit(inc, f)
    fine = client.submit(inc, 3)
    exc = f.exception(timeout=30)
    assert isinstance(exc, ZeroDivisionError) and str(exc) == "no 3"
    assert f.status == "error"
    with pytest.raises(ZeroDivisionError, match="no 3"):
        f.result()
    with pytest.raises(ZeroDivisionError, match="no 3"):
        after.result()
    assert "in boom" in f.traceback()
    # The rest of the session goes on.
    assert fine.result() == 4


def test_cancel_stops_running_python_code_and_marks_the_future(client: daskrs.Client) -> None:
    f = client.submit(slow_inc, 1, 60.0, pure=False)
    wait_until(
        lambda: client.scheduler_info()["tasks"].get("processing", 0) == 1, what="task started"
    )
    f.cancel()
    assert f.cancelled() and f.done()
    with pytest.raises(CancelledError):
        f.result()
    # The worker's thread is free again long before the minute is up.
    wait_until(lambda: client.scheduler_info()["tasks"].get("processing", 0) == 0)
    assert client.submit(inc, 7, pure=False).result(timeout=20) == 8


def test_add_done_callback_is_called_once_done(client: daskrs.Client) -> None:
    called = threading.Event()
    seen: list[str] = []

    def cb(fut: daskrs.Future) -> None:
        seen.append(fut.status)
        called.set()

    f = client.submit(slow_inc, 5, 0.2, pure=False)
    f.add_done_callback(cb)
    assert called.wait(30)
    assert seen == ["finished"]
    # Already done: called at once.
    f.add_done_callback(lambda fut: seen.append("again"))
    assert seen == ["finished", "again"]


def test_wait_all_and_first_completed(client: daskrs.Client) -> None:
    fast = client.submit(slow_inc, 1, 0.0, pure=False)
    slow = client.submit(slow_inc, 2, 1.5, pure=False)
    first = daskrs.wait([fast, slow], return_when=daskrs.FIRST_COMPLETED)
    assert fast in first.done
    done, not_done = daskrs.wait([fast, slow])
    assert done == {fast, slow} and not not_done
    long = client.submit(slow_inc, 3, 5.0, pure=False)
    with pytest.raises(FuturesTimeoutError):
        daskrs.wait(long, timeout=0.1)
    long.cancel()


def test_wait_takes_a_persisted_collection(client: daskrs.Client) -> None:
    x = client.persist(da.arange(40, chunks=10) * 2)
    done, not_done = daskrs.wait(x)
    assert len(done) == 4 and not not_done
    assert all(f.status == "finished" for f in done)
    assert {f.key for f in done} == set(x.__dask_keys__())
    assert x.sum().compute() == 2 * sum(range(40))


def test_as_completed_yields_in_completion_order(client: daskrs.Client) -> None:
    delays = [1.2, 0.0, 0.6]
    fs = [client.submit(slow_inc, i, d, pure=False) for i, d in enumerate(delays)]
    order = [f for f in daskrs.as_completed(fs)]
    assert [fs.index(f) for f in order] == [1, 2, 0]
    results = sorted(r for _, r in daskrs.as_completed(fs, with_results=True))
    assert results == [1, 2, 3]


@pytest.fixture
def fresh() -> Iterator[daskrs.Client]:
    """A cluster of this test's own, holding nothing of other tests'."""
    with daskrs.Client(n_workers=2, set_as_default=False) as c:
        yield c


def test_results_are_released_when_the_last_reference_goes(fresh: daskrs.Client) -> None:
    fs = fresh.map(inc, range(20), pure=False)
    fresh.gather(fs)
    assert held(fresh) == 20
    copy = fs[0]
    del fs
    gc.collect()
    # One result is still referenced.
    wait_until(lambda: held(fresh) == 1, what="only the referenced result is held")
    assert copy.result() == 1
    del copy
    gc.collect()
    wait_until(lambda: held(fresh) == 0, what="nothing is held")


def test_persisted_collections_stay_on_workers_until_deleted(fresh: daskrs.Client) -> None:
    x = da.arange(1000, chunks=100)
    (y,) = dask.persist(x + 1, scheduler=fresh)
    assert (y.sum() * 2).compute(scheduler=fresh) == 2 * sum(range(1, 1001))
    # The sum's graph is gone; the 10 chunks of y stay.
    wait_until(lambda: held(fresh) == 10, what=f"held {held(fresh)}, want the 10 chunks")
    z = fresh.persist(y * 2)
    np.testing.assert_array_equal(z.compute(scheduler=fresh), (np.arange(1000) + 1) * 2)
    wait_until(lambda: held(fresh) == 20, what=f"held {held(fresh)}, want y's and z's chunks")
    del y, z
    gc.collect()
    wait_until(lambda: held(fresh) == 0, what=f"held {held(fresh)}, want nothing")


def test_closing_the_client_releases_everything_it_held(fresh: daskrs.Client) -> None:
    other = daskrs.Client(fresh.address, set_as_default=False)
    fs = other.map(inc, range(10), pure=False)
    other.gather(fs)
    assert held(fresh) == 10
    other.close()
    wait_until(lambda: held(fresh) == 0, what="the closed client's results are released")
    assert fs[0].status == "finished"


def test_an_unpicklable_argument_is_refused_at_submit(client: daskrs.Client) -> None:
    with pytest.raises(TypeError, match="does not pickle"):
        client.submit(inc, threading.Lock())


def test_submit_refuses_what_is_not_callable(client: daskrs.Client) -> None:
    with pytest.raises(TypeError, match="must be callable"):
        client.submit(5)  # type: ignore[arg-type]


def test_compute_returns_futures_of_collections_final_values(client: daskrs.Client) -> None:
    import dask.dataframe as dd
    import pandas as pd

    total = client.compute(da.arange(100, chunks=10).sum())
    assert isinstance(total, daskrs.Future)
    assert total.result() == sum(range(100))
    pdf = pd.DataFrame({"k": [i % 3 for i in range(60)], "v": range(60)})
    by = dd.from_pandas(pdf, npartitions=4).groupby("k").v.sum()
    arr, frame = client.compute([da.ones((4, 4), chunks=2) * 2, by], sync=True)
    np.testing.assert_array_equal(arr, np.full((4, 4), 2.0))
    pd.testing.assert_series_equal(frame.sort_index(), pdf.groupby("k").v.sum())
    assert client.compute(total) is total
