"""The executor process on its own: the messages a worker sends it and the
answers it gives (the layout is in the worker's ``python.rs``)."""

from __future__ import annotations

import operator
import struct
import subprocess
import sys

import pytest
from dask._task_spec import Task

from daskrs import _executor, _serialize


def _double(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative {x}")
    return 2 * x


def _task(x: int) -> bytes:
    return _serialize.dumps_bytes((Task("t", _double, x), []))[1]


def _answer(stream) -> tuple[str, object, float]:  # type: ignore[no-untyped-def]
    frames = _executor.receive(stream)
    assert frames is not None and len(frames) == 4
    tag = bytes(frames[0]).decode()
    (seconds,) = struct.unpack("<d", frames[3])
    if tag == "ok":
        return tag, _serialize.loads(bytes(frames[1]).decode(), frames[2]), seconds
    return tag, bytes(frames[1]).decode(), seconds


@pytest.fixture
def executor():  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskrs._executor"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    hello = _executor.receive(proc.stdout)  # type: ignore[arg-type]
    assert hello is not None and bytes(hello[0]) == b"hello"
    yield proc
    proc.kill()
    proc.wait()


def _run(proc, tasks: list[bytes], count: int | None = None, inputs=()) -> None:  # type: ignore[no-untyped-def]
    """Sends a `run` message; ``inputs`` go with the first task."""
    frames: list[list[bytes]] = [[b"run"], [struct.pack("<I", len(tasks) if count is None else count)]]
    for i, payload in enumerate(tasks):
        given = list(inputs) if i == 0 else []
        frames += [[payload], ["".join(fmt for fmt, _ in given).encode()]]
        frames += [[data] for _, data in given]
    _executor.send(proc.stdin, frames)


def test_a_batch_is_answered_task_by_task_in_order(executor) -> None:  # type: ignore[no-untyped-def]
    _run(executor, [_task(1), _task(-5), _task(3)])
    first, second, third = (_answer(executor.stdout) for _ in range(3))
    assert first[:2] == ("ok", 2) and third[:2] == ("ok", 6)
    assert second[0] == "err" and "ValueError: negative -5" in str(second[1])
    assert all(a[2] >= 0 for a in (first, second, third))
    # The process serves on.
    _run(executor, [_task(21)])
    assert _answer(executor.stdout)[:2] == ("ok", 42)


def test_a_batch_cut_short_is_answered_for_every_task_it_counts(executor) -> None:  # type: ignore[no-untyped-def]
    _run(executor, [_task(4)], count=3)
    answers = [_answer(executor.stdout) for _ in range(3)]
    assert answers[0][:2] == ("ok", 8)
    assert [a[0] for a in answers[1:]] == ["err", "err"]
    assert "cut short" in str(answers[1][1])


def _diamond() -> list:  # type: ignore[type-arg]
    """a = x + 1; b = 2a; c = a - 3; d = b + c: a small subgraph with a
    shared node, as dask fuses from blockwise operations."""
    from dask._task_spec import Task, TaskRef

    a = Task("a", operator.add, TaskRef("x"), 1)
    b = Task("b", operator.mul, TaskRef("a"), 2)
    c = Task("c", operator.sub, TaskRef("a"), 3)
    d = Task("d", operator.add, TaskRef("b"), TaskRef("c"))
    return [d, c, b, a]


def test_a_small_subgraph_runs_to_what_dask_s_own_order_gives() -> None:
    from dask._task_spec import DataNode, execute_graph

    for keys in (None, ["d"], ["b", "d"]):
        ours = {n.key: n for n in _diamond()} | {"x": DataNode("x", 5)}
        theirs = dict(ours)
        assert _executor.run_subgraph(ours, keys=keys) == execute_graph(theirs, keys=keys)
    assert _executor.run_subgraph({n.key: n for n in _diamond()}, cache={"x": 5})["d"] == 15


def test_a_fused_task_runs_in_the_executor(executor) -> None:  # type: ignore[no-untyped-def]
    from dask._task_spec import Task

    fused = Task.fuse(*_diamond(), key="d")
    payload = _serialize.dumps_bytes((fused, ["x"]))[1]
    _run(executor, [payload, payload], inputs=[_serialize.dumps_bytes(5)])
    assert _answer(executor.stdout)[:2] == ("ok", 15)
    # Without its input, the second fails and says so.
    tag, text, _ = _answer(executor.stdout)
    assert tag == "err" and "ValueError" in str(text)


def _wait_for(path: str) -> str:
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return "never released"
        time.sleep(0.01)
    return "released"


def test_an_answer_does_not_wait_for_a_long_task_after_it(executor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import select

    from dask._task_spec import Task

    gate = str(tmp_path / "gate")
    held = _serialize.dumps_bytes((Task("held", _wait_for, gate), []))[1]
    _run(executor, [_task(1), held])
    # The first answer comes while the second task still runs: it is not
    # kept in the buffer until the batch ends.
    ready, _, _ = select.select([executor.stdout], [], [], 30)
    assert ready, "the first answer did not come while the second task ran"
    assert _answer(executor.stdout)[:2] == ("ok", 2)
    open(gate, "w").close()
    assert _answer(executor.stdout)[:2] == ("ok", "released")
