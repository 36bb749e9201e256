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
    data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    head = bytearray(_HEAD.pack(MAGIC, len(raws), len(data)))
    for r in raws:
        head += _LEN.pack(r.nbytes)
    return "p", [bytes(head), data, *raws]


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
