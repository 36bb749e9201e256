"""How dask graphs become daskrs tasks (no cluster needed)."""

from __future__ import annotations

import dask
import pytest
from dask._task_spec import convert_legacy_graph

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


def _tree(leaves: int) -> tuple[dict, str]:
    """A dask graph summing ``leaves`` leaves pairwise: 2 * leaves - 1 tasks."""
    level = [dask.delayed(inc)(i, dask_key_name=f"leaf-{i}") for i in range(leaves)]
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            dask.delayed(add)(level[i], level[i + 1], dask_key_name=f"add-{depth}-{i}")
            for i in range(0, len(level), 2)
        ]
    return dict(level[0].__dask_graph__()), level[0].key


def _run_in_process(tasks: list[tuple]) -> dict[str, object]:
    """The values of tasks run here, one by one, as an executor runs them."""
    from daskrs import _executor, _serialize

    values: dict[str, tuple[str, bytes]] = {}
    pending = list(tasks)
    while pending:
        for t in list(pending):
            if all(d in values for d in t[3]):
                answer = _executor.run(
                    memoryview(t[2]),
                    "".join(values[d][0] for d in t[3]),
                    [memoryview(values[d][1]) for d in t[3]],
                )
                assert answer[0] == [b"ok"], answer
                values[t[0]] = (bytes(answer[1][0]).decode(), b"".join(bytes(p) for p in answer[2]))
                pending.remove(t)
    return {k: _serialize.loads(fmt, data) for k, (fmt, data) in values.items()}


def test_inputs_of_several_tasks_run_inside_the_task_that_takes_them_up_to_the_limit() -> None:
    graph, root = _tree(64)  # 127 tasks
    # Without a limit above 1 only chains fuse: each leaf and each add stays.
    assert len(_graph.to_tasks(graph, keep=[root])) == 127
    tasks = _graph.to_tasks(graph, keep=[root], threads=lambda: 1)  # 127 // 16: 7 tasks at most
    assert _graph.group_limit(127, 1) == 7
    fused = _graph.fuse(convert_legacy_graph(graph), {root}, 7)
    sizes = sorted(len(getattr(n, "nodes", [n])) for n in fused.values())
    # Two leaves and their add make 3 tasks, two of those and their add 7:
    # each of the 16 adds of the second level runs 7 as one. Two of those
    # and an add would be 15, so the 8 adds of the third level stay apart,
    # and the levels above group them again in 3s and 7s: the 2 adds of the
    # fifth level run 7 each, the root on its own.
    assert sizes == [1] + [7] * 18
    assert len(tasks) == 19
    assert _run_in_process(tasks)[root] == sum(range(1, 65))


def test_many_threads_keep_every_task_of_a_small_graph_apart() -> None:
    graph, root = _tree(64)
    assert len(_graph.to_tasks(graph, keep=[root], threads=lambda: 8)) == 127
    assert len(_graph.to_tasks(graph, keep=[root], threads=lambda: 0)) == 127


def test_a_wanted_input_stays_a_task_of_its_own() -> None:
    graph, root = _tree(8)
    tasks = {t[0]: t[3] for t in _graph.to_tasks(graph, keep=[root, "add-1-2"], threads=lambda: 0)}
    assert "add-1-2" in tasks
    fused = _graph.fuse(convert_legacy_graph(graph), {root, "add-1-2"}, 64)
    assert set(fused) == {root, "add-1-2"}
    assert fused[root].dependencies == {"add-1-2"}


class Box:
    pass


def make_box() -> Box:
    return Box()


def note_box(box: Box, seen: list) -> int:
    import weakref

    seen.append(weakref.ref(box))
    return 1


def box_gone(n: int, seen: list) -> bool:
    import gc

    gc.collect()
    return seen[0]() is None


def test_a_fused_task_lets_go_of_a_value_once_its_taker_has_run() -> None:
    from dask._task_spec import Task, TaskRef

    seen: list = []
    graph = {
        "box": Task("box", make_box),
        "noted": Task("noted", note_box, TaskRef("box"), seen),
        "gone": Task("gone", box_gone, TaskRef("noted"), seen),
    }
    fused = _graph.fuse(graph, {"gone"})
    assert list(fused) == ["gone"]
    assert fused["gone"]({}) is True


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="notes arrive with Python 3.11")
def test_an_error_inside_a_fused_task_names_the_task_it_came_from() -> None:
    a = dask.delayed(fail)(1, dask_key_name="a")
    b = dask.delayed(inc)(2, dask_key_name="b")
    c = dask.delayed(add)(a, b, dask_key_name="c")
    fused = _graph.fuse(convert_legacy_graph(dict(c.__dask_graph__())), {"c"}, 3)
    assert list(fused) == ["c"]
    with pytest.raises(ValueError, match="bad 1") as err:
        fused["c"]({})
    assert "in task 'a', run inside task 'c'" in err.value.__notes__


def test_a_value_two_tasks_inside_take_is_kept_until_the_second_has_run() -> None:
    from dask._task_spec import Task, TaskRef

    seen: list = []
    graph = {
        "box": Task("box", make_box),
        "one": Task("one", note_box, TaskRef("box"), seen),
        "two": Task("two", note_box, TaskRef("box"), []),
        "gone": Task("gone", box_gone, TaskRef("one"), seen),
        "both": Task("both", add, TaskRef("two"), TaskRef("gone")),
    }
    fused = _graph.Fused("both", [graph[k] for k in ("box", "one", "two", "gone", "both")])
    assert fused.dependencies == frozenset()
    # `box` goes after `two`, `one` after `gone`: nothing is held at the end.
    assert [set(d) for d in fused.drops] == [set(), set(), {"box"}, {"one"}, {"two", "gone"}]
    assert fused({}) == 2  # 1 + True: the box was gone before `gone` looked


def _array_graph(x: object) -> tuple[dict, object]:
    """The graph dask.compute hands a scheduler for ``x``, and its key."""
    got: dict = {}

    def grab(dsk, keys, **kwargs):  # type: ignore[no-untyped-def]
        got["graph"] = convert_legacy_graph(dict(dsk if isinstance(dsk, dict) else dsk.__dask_graph__()))
        (got["key"],) = _graph.flatten_keys(keys)
        return [0]

    dask.compute(x, scheduler=grab)
    return got["graph"], got["key"]


@pytest.mark.parametrize("make", ["ones", "zeros", "full", "empty", "ones_like"])
def test_constant_blocks_several_tasks_take_are_made_inside_each_of_them(make: str) -> None:
    import dask.array as da
    import numpy as np

    base = da.arange(36, chunks=6).reshape(6, 6).rechunk(3)
    block = {
        "ones": lambda: da.ones((6, 6), chunks=3),
        "zeros": lambda: da.zeros((6, 6), chunks=3),
        "full": lambda: da.full((6, 6), 7.0, chunks=3),
        "empty": lambda: da.empty((6, 6), chunks=3, dtype=int),
        "ones_like": lambda: da.ones_like(base),
    }[make]()
    # What `empty` holds is unknown but the same in every copy: times 0, nothing.
    x = ((block + block.T) * (0 if make == "empty" else 1) + base).sum()
    graph, root = _array_graph(x)
    constants = {k for k, n in graph.items() if _graph.recomputed(n)}
    assert constants, "the graph has constant blocks"
    assert all(not graph[k].dependencies for k in constants)
    tasks = _graph.to_tasks(graph, keep=[root], threads=lambda: 1)
    keys = {t[0] for t in tasks}
    assert not keys & {_graph.key_name(k) for k in constants}
    for t in tasks:
        assert not set(t[3]) & {_graph.key_name(k) for k in constants}
    expected = x.compute(scheduler="sync")
    assert np.isclose(_run_in_process(tasks)[_graph.key_name(root)], expected)


def test_blocks_of_data_are_not_made_twice() -> None:
    import dask.array as da
    import numpy as np

    for x in (
        da.from_array(np.arange(36.0).reshape(6, 6), chunks=3),
        da.random.default_rng(1).random((6, 6), chunks=3),
        da.arange(36, chunks=9).reshape(6, 6).rechunk(3),
    ):
        graph, root = _array_graph((x + x.T).sum())
        assert not any(_graph.recomputed(n) for n in graph.values())
    d = dask.delayed(inc)(1)
    graph, _ = _array_graph(dask.delayed(add)(d, d))
    assert not any(_graph.recomputed(n) for n in graph.values())
