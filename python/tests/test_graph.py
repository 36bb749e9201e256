"""How dask graphs become daskrs tasks (no cluster needed)."""

from __future__ import annotations

import dask
import pytest

import daskrs
from daskrs import _graph


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def _names(tasks: list[tuple]) -> dict[str, list[str]]:
    return {t[0]: t[3] for t in tasks}


def test_a_linear_chain_is_one_task_under_its_last_key() -> None:
    x = dask.delayed(inc)(1, dask_key_name="x")
    y = dask.delayed(inc)(x, dask_key_name="y")
    z = dask.delayed(inc)(y, dask_key_name="z")
    assert _names(_graph.to_tasks(z.__dask_graph__(), keep=["z"])) == {"z": []}


def test_wanted_and_shared_keys_stay_tasks() -> None:
    x = dask.delayed(inc)(1, dask_key_name="x")
    y = dask.delayed(inc)(x, dask_key_name="y")
    z = dask.delayed(inc)(y, dask_key_name="z")
    # y wanted: the chain breaks there (x goes into y).
    assert _names(_graph.to_tasks(z.__dask_graph__(), keep=["y", "z"])) == {"y": [], "z": ["y"]}
    # x taken by two tasks: it stays, and each of them stays.
    a = dask.delayed(inc)(x, dask_key_name="a")
    b = dask.delayed(inc)(x, dask_key_name="b")
    w = dask.delayed(add)(a, b, dask_key_name="w")
    assert _names(_graph.to_tasks(w.__dask_graph__(), keep=["w"])) == {"x": [], "a": ["x"], "b": ["x"], "w": ["a", "b"]}


def test_a_chain_runs_its_tasks_in_order_on_the_inputs_of_its_first() -> None:
    from daskrs import _executor, _serialize

    a = dask.delayed(inc)(1, dask_key_name="a")
    x = dask.delayed(add)(a, 10, dask_key_name="x")
    y = dask.delayed(inc)(x, dask_key_name="y")
    z = dask.delayed(str)(y, dask_key_name="z")
    tasks = {t[0]: t for t in _graph.to_tasks(z.__dask_graph__(), keep=["a", "z"])}
    assert {k: t[3] for k, t in tasks.items()} == {"a": [], "z": ["a"]}
    fmt, value = _serialize.dumps_bytes(5)
    answer = _executor.run(memoryview(tasks["z"][2]), fmt, [memoryview(value)])
    assert answer[0] == [b"ok"]
    assert _serialize.loads(bytes(answer[1][0]).decode(), b"".join(answer[2])) == "16"


def test_chains_and_wanted_intermediates_compute_right(client: daskrs.Client) -> None:
    x = dask.delayed(inc)(1)
    y = dask.delayed(inc)(x)
    z = dask.delayed(inc)(y)
    assert dask.compute(z, scheduler=client) == (4,)
    assert dask.compute(y, z, scheduler=client) == (3, 4)
    with pytest.raises(ZeroDivisionError):
        dask.delayed(inc)(dask.delayed(lambda v: v / 0)(x)).compute(scheduler=client)
