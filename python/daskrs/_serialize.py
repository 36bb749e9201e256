"""How Python values travel between executors, workers and the client.

A value is sent as pickle protocol 5 with its large buffers out of band
(numpy arrays, pandas blocks, Arrow buffers are not copied into the pickle
stream), or, for a ``pyarrow.Table``, as an Arrow IPC stream that the SQL
engine reads directly. The pickle layout, in little-endian::

    b"DRP1"  u32 buffer count  u64 pickle length  u64 length per buffer
    pickle bytes  buffer bytes...

Formats are named by one letter on the executor's pipe: ``p`` pickle,
``a`` Arrow, ``o`` opaque bytes (results of the built-in kinds).
"""

from __future__ import annotations

import pickle
import struct
import sys
import threading
from collections import OrderedDict
from typing import Any

import cloudpickle

MAGIC = b"DRP1"
_HEAD = struct.Struct("<4sIQ")
_LEN = struct.Struct("<Q")


def dumps(value: Any) -> tuple[str, list[bytes | memoryview]]:
    """The value's format letter and the parts of its bytes, in order."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(value, pa.Table):
        return "a", [_arrow_ipc(pa, value)]
    buffers: list[pickle.PickleBuffer] = []
    data = _pickle(value, buffers)
    raws = [b.raw() for b in buffers]
    head = bytearray(_HEAD.pack(MAGIC, len(raws), len(data)))
    for r in raws:
        head += _LEN.pack(r.nbytes)
    return "p", [bytes(head), data, *raws]


def _pickle(value: Any, buffers: list[pickle.PickleBuffer] | None) -> bytes:
    """The standard pickler where it serves (it is several times faster),
    else cloudpickle: for what it refuses (lambdas, local functions) and
    for what it would name by reference but workers cannot import (the
    notebook's ``__main__``, modules registered to travel by value).
    Without ``buffers``, everything goes in band."""
    callback = None if buffers is None else buffers.append
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=callback)
    except Exception:  # noqa: BLE001 - whatever the standard pickler refuses
        pass
    else:
        by_value = cloudpickle.list_registry_pickle_by_value()
        if b"__main__" not in data and not any(m.encode() in data for m in by_value):
            return data
    if buffers is not None:
        buffers.clear()
    return cloudpickle.dumps(value, protocol=5, buffer_callback=callback)


def dumps_bytes(value: Any) -> tuple[str, bytes]:
    fmt, parts = dumps(value)
    return fmt, b"".join(parts)


def loads(fmt: str, data: bytes | memoryview) -> Any:
    """The value of bytes in the named format (``pickle``/``p``,
    ``arrow``/``a``, ``opaque``/``o``)."""
    view = memoryview(data)
    if fmt in ("p", "pickle"):
        return _loads_pickle(view)
    if fmt in ("a", "arrow"):
        import pyarrow as pa

        return pa.ipc.open_stream(pa.py_buffer(view)).read_all()
    if fmt in ("o", "opaque"):
        return bytes(view)
    raise ValueError(f"cannot read data of format {fmt!r}")


def _loads_pickle(view: memoryview) -> Any:
    if len(view) < _HEAD.size or bytes(view[:4]) != MAGIC:
        raise ValueError("not a daskrs pickle frame")
    _, n, length = _HEAD.unpack_from(view, 0)
    at = _HEAD.size
    sizes = []
    for _ in range(n):
        (size,) = _LEN.unpack_from(view, at)
        sizes.append(size)
        at += _LEN.size
    data = view[at : at + length]
    at += length
    buffers = []
    for size in sizes:
        buffers.append(view[at : at + size])
        at += size
    if at != len(view):
        raise ValueError("a daskrs pickle frame of the wrong length")
    return pickle.loads(data, buffers=buffers)


def _arrow_ipc(pa: Any, table: Any) -> memoryview:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return memoryview(sink.getvalue())


# Functions pickled once. ``client.submit(f, i)`` in a loop sends the same
# function with every task: its bytes are kept (for the most recent
# functions) instead of pickling its code again each time, and the executor
# keeps what it loaded the same way.
_CACHE_SIZE = 128
_lock = threading.Lock()
_dumped: OrderedDict[Any, bytes] = OrderedDict()
_loaded: OrderedDict[bytes, Any] = OrderedDict()


class Function:
    """A function that pickles as its cached bytes (see ``load_function``)."""

    __slots__ = ("func", "data")

    def __init__(self, func: Any) -> None:
        self.func = func
        self.data = _function_bytes(func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Out of band: not copied into the task's pickle, and not scanned
        # for names that would need cloudpickle (see `_pickle`).
        return load_function, (pickle.PickleBuffer(self.data),)


def _function_bytes(func: Any) -> bytes:
    with _lock:
        data = _dumped.get(func)
        if data is not None:
            _dumped.move_to_end(func)
            return data
    try:
        # By reference where the worker can import it: also what cloudpickle
        # cannot name, such as a compiled class's classmethod
        # (`pyarrow.Table.from_pandas`).
        data = _pickle(func, None)
    except Exception as exc:  # noqa: BLE001 - whatever pickling raises
        raise TypeError(f"function {func!r} does not pickle ({type(exc).__name__}: {exc})") from exc
    with _lock:
        try:
            _dumped[func] = data
        except TypeError:
            return data  # not hashable: not cached
        if len(_dumped) > _CACHE_SIZE:
            _dumped.popitem(last=False)
    return data


def load_function(data: Any) -> Any:
    """The function of pickled bytes, loaded once per executor."""
    data = bytes(data)
    with _lock:
        func = _loaded.get(data)
        if func is not None:
            _loaded.move_to_end(data)
            return func
    func = pickle.loads(data)
    with _lock:
        _loaded[data] = func
        if len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
    return func
