"""The process a worker runs Python tasks in: ``python -m daskrs._executor``.

The worker starts it from its own interpreter and talks to it on its stdin
and stdout (the message layout is in the worker's ``python.rs``). What user
code prints goes to the worker's stderr, never into the pipe. A crash here
costs this process only; the worker reports it and starts another.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import traceback
from typing import Any, BinaryIO

from daskrs import _serialize, _versions

_COUNT = struct.Struct("<I")
_LEN = struct.Struct("<Q")


def _read_exact(stream: BinaryIO, n: int) -> memoryview | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            return None
        got += k
    return view


def receive(stream: BinaryIO) -> list[memoryview] | None:
    """One message, or None when the worker closed the pipe."""
    head = _read_exact(stream, _COUNT.size)
    if head is None:
        return None
    (n,) = _COUNT.unpack(head)
    frames = []
    for _ in range(n):
        size = _read_exact(stream, _LEN.size)
        if size is None:
            return None
        frame = _read_exact(stream, _LEN.unpack(size)[0])
        if frame is None:
            return None
        frames.append(frame)
    return frames


def send(stream: BinaryIO, frames: list[list[bytes | memoryview]]) -> None:
    """One message; each frame is given as its parts."""
    stream.write(_COUNT.pack(len(frames)))
    for parts in frames:
        stream.write(_LEN.pack(sum(memoryview(p).nbytes for p in parts)))
        for p in parts:
            stream.write(p)
    stream.flush()


def run(frames: list[memoryview]) -> list[list[bytes | memoryview]]:
    """Runs the task a `run` message carries; the answer's frames."""
    try:
        node, dep_keys = _load_task(frames[1])
        formats = bytes(frames[2]).decode()
        values = {
            key: _serialize.loads(fmt, data)
            for key, fmt, data in zip(dep_keys, formats, frames[3:], strict=True)
        }
    except BaseException as exc:  # noqa: BLE001 - reported, never raised here
        return _failed(exc, _describe(exc))
    try:
        result = node(values)
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything
        # The traceback from the user's code down, without this frame.
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        return _failed(exc, _describe(exc.with_traceback(tb)))
    try:
        fmt, parts = _serialize.dumps(result)
    except BaseException as exc:  # noqa: BLE001
        error = TypeError(
            f"the task's result, of type {type(result).__module__}.{type(result).__qualname__}, "
            f"cannot be sent from the worker: it does not pickle ({type(exc).__name__}: {exc})"
        )
        return _failed(error, _describe(error))
    return [[b"ok"], [fmt.encode()], parts]


def _load_task(payload: memoryview) -> Any:
    try:
        return _serialize.loads("p", payload)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the task needs module {exc.name!r}, which the worker's Python "
            f"({sys.executable}, Python {sys.version.split()[0]}) cannot import: "
            "install it there",
            name=exc.name,
        ) from None


def _failed(exc: BaseException, text: str) -> list[list[bytes | memoryview]]:
    return [[b"err"], [text.encode()], [_pickle_exception(exc)]]


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


def _pickle_exception(exc: BaseException) -> bytes:
    try:
        return _serialize.dumps_bytes(exc)[1]
    except BaseException:  # noqa: BLE001 - an exception that cannot travel
        return b""


def main() -> None:
    # The pipe to the worker is a private descriptor; fd 1 becomes stderr so
    # that user code's prints cannot corrupt it.
    pipe_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Buffered: a message's header, frame lengths and small frames come in
    # one read, not one system call each.
    pipe_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    send(pipe_out, [[b"hello"], [json.dumps(_versions.versions()).encode()]])
    while True:
        frames = receive(pipe_in)
        if frames is None:
            return
        tag = bytes(frames[0]) if frames else b""
        if tag == b"run" and len(frames) >= 3:
            send(pipe_out, run(frames))
        else:
            answer: Any = [[b"err"], [f"unknown request {tag!r}".encode()], [b""]]
            send(pipe_out, answer)


if __name__ == "__main__":
    main()
