"""How values and tasks are pickled on their way to the workers."""

from __future__ import annotations

import pickle

import numpy as np

from daskrs import _serialize


def test_values_round_trip_with_their_buffers_out_of_band() -> None:
    arr = np.arange(100_000, dtype="float64")
    fmt, parts = _serialize.dumps({"a": arr, "f": lambda v: v + 1})
    assert fmt == "p"
    # The array's buffer is a part of its own, not copied into the pickle.
    assert any(memoryview(p).nbytes == arr.nbytes for p in parts)
    back = _serialize.loads(fmt, b"".join(parts))
    np.testing.assert_array_equal(back["a"], arr)
    assert back["f"](1) == 2


class ByValue:
    def __init__(self) -> None:
        self.v = 3


def test_what_workers_could_not_import_travels_by_value() -> None:
    # This module is registered to travel by value (conftest): the standard
    # pickler would name its class, so cloudpickle takes over and sends it.
    data = _serialize.dumps_bytes(ByValue())[1]
    assert b"cloudpickle" in data
    assert _serialize.loads("p", data).v == 3
    # What workers import by name goes through the standard pickler.
    plain = _serialize.dumps_bytes(np.float64(2.5))[1]
    assert b"cloudpickle" not in plain
    assert _serialize.loads("p", plain) == 2.5


def test_a_function_is_pickled_once_and_loaded_once() -> None:
    def double(v: int) -> int:
        return 2 * v

    a, b = _serialize.Function(double), _serialize.Function(double)
    assert a.data is b.data  # the cached bytes
    first = pickle.loads(pickle.dumps(a, protocol=5))
    second = pickle.loads(pickle.dumps(b, protocol=5))
    assert first is second  # loaded once
    assert first(21) == 42
