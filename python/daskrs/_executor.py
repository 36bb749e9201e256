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
import threading
import time
import traceback
from typing import Any, BinaryIO

from daskrs import _graph, _serialize, _versions

_COUNT = struct.Struct("<I")
_LEN = struct.Struct("<Q")
_SECONDS = struct.Struct("<d")
# The layout of the messages below, which the worker checks at hello:
# 2 hands over tasks in batches and answers each with its seconds.
PROTOCOL = 2
# The longest a finished task's answer waits in the buffer for the rest of
# its batch (see Answers).
FLUSH_SECONDS = 0.002


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


def send(stream: BinaryIO, frames: list[list[bytes | memoryview]], flush: bool = True) -> None:
    """One message; each frame is given as its parts. Unflushed, it waits
    in the stream's buffer for the next flush."""
    stream.write(_COUNT.pack(len(frames)))
    for parts in frames:
        stream.write(_LEN.pack(sum(memoryview(p).nbytes for p in parts)))
        for p in parts:
            stream.write(p)
    if flush:
        stream.flush()


class Answers:
    """The pipe to the worker. A task's answer waits in the buffer for the
    rest of its batch, so that the worker hears of a batch of short tasks
    in one read; but never longer than ``FLUSH_SECONDS``: a thread flushes
    what waits that long, however long the task that follows runs."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._waiting = threading.Event()
        threading.Thread(target=self._flush_late, name="flush", daemon=True).start()

    def send(self, frames: list[list[bytes | memoryview]], last: bool = True) -> None:
        with self._lock:
            send(self.stream, frames, flush=last)
            if last:
                self._waiting.clear()
            else:
                self._waiting.set()

    def _flush_late(self) -> None:
        while True:
            self._waiting.wait()
            time.sleep(FLUSH_SECONDS)
            with self._lock:
                if self._waiting.is_set():
                    self._waiting.clear()
                    self.stream.flush()


def run_batch(frames: list[memoryview], out: Answers) -> None:
    """Runs the tasks a `run` message carries, in order, and sends one answer
    each, the last one flushed."""
    try:
        (count,) = _COUNT.unpack(frames[1])
    except (IndexError, struct.error):
        out.send(_failed_text("the worker sent a `run` message without a task count") + [[_SECONDS.pack(0.0)]])
        return
    i = 2
    for n in range(count):
        start = time.perf_counter()
        if i + 2 <= len(frames):
            formats = bytes(frames[i + 1]).decode(errors="replace")
            end = i + 2 + len(formats)
        else:
            formats, end = "", len(frames) + 1
        if end > len(frames):
            answer = _failed_text(f"task {n} of a `run` message is cut short")
        else:
            answer = run(frames[i], formats, frames[i + 2 : end])
        i = end
        answer.append([_SECONDS.pack(time.perf_counter() - start)])
        out.send(answer, last=n == count - 1)


def run(
    payload: memoryview, formats: str, inputs: list[memoryview]
) -> list[list[bytes | memoryview]]:
    """Runs one task: its pickled node, the format letter of each input and
    the inputs; the answer's frames."""
    try:
        node, dep_keys = _load_task(payload)
        values = {
            key: _serialize.loads(fmt, data)
            for key, fmt, data in zip(dep_keys, formats, inputs, strict=True)
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
        task = _serialize.loads("p", payload)
        if not _quick_subgraphs_installed:
            _install_quick_subgraphs()
        return task
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the task needs module {exc.name!r}, which the worker's Python "
            f"({sys.executable}, Python {sys.version.split()[0]}) cannot import: "
            "install it there",
            name=exc.name,
        ) from None


# Dask runs a task it fused from several (a blockwise chain of an array or
# dataframe graph) by ordering that small subgraph with ``dask.order`` on
# every run, which costs more than the numpy calls it orders. In this
# process, subgraphs of up to QUICK_SUBGRAPH nodes run in a plain
# depth-first order instead: any order that runs inputs first gives the same
# values, and memory-aware ordering only pays off on big graphs.
QUICK_SUBGRAPH = 64
_quick_subgraphs_installed = False


def _install_quick_subgraphs() -> None:
    global _quick_subgraphs_installed
    spec = sys.modules.get("dask._task_spec")
    if spec is None:
        return
    _quick_subgraphs_installed = True
    original = getattr(spec, "execute_graph", None)
    if original is None or not hasattr(spec, "_execute_subgraph"):
        return

    def execute_graph(dsk: Any, cache: Any = None, keys: Any = None) -> Any:
        if isinstance(dsk, (list, tuple, set, frozenset)):
            dsk = {t.key: t for t in dsk}
        if not isinstance(dsk, dict) or len(dsk) > QUICK_SUBGRAPH:
            return original(dsk, cache=cache, keys=keys)
        return run_subgraph(dsk, cache, keys)

    spec.execute_graph = execute_graph


def run_subgraph(dsk: dict[Any, Any], cache: Any = None, keys: Any = None) -> Any:
    """What ``dask._task_spec.execute_graph`` returns for ``dsk``, its nodes
    run in depth-first order: the values of the nodes, less those no node
    takes any more that ``keys`` (when given) does not name."""
    order = _graph.inputs_first(dsk)
    takers: dict[Any, int] = {}
    for node in dsk.values():
        for d in node.dependencies:
            takers[d] = takers.get(d, 0) + 1
    cache = cache or {}
    for key in order:
        node = dsk[key]
        cache[key] = node(cache)
        for d in node.dependencies:
            takers[d] -= 1
            if takers[d] == 0 and keys and d not in keys:
                del cache[d]
    return cache


def _failed(exc: BaseException, text: str) -> list[list[bytes | memoryview]]:
    return [[b"err"], [text.encode()], [_pickle_exception(exc)]]


def _failed_text(text: str) -> list[list[bytes | memoryview]]:
    return [[b"err"], [text.encode()], [b""]]


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
    out = Answers(pipe_out)
    hello = {**_versions.versions(), "executor_protocol": PROTOCOL}
    out.send([[b"hello"], [json.dumps(hello).encode()]])
    while True:
        frames = receive(pipe_in)
        if frames is None:
            return
        tag = bytes(frames[0]) if frames else b""
        if tag == b"run":
            run_batch(frames, out)
        else:
            out.send(_failed_text(f"unknown request {tag!r}") + [[_SECONDS.pack(0.0)]])


if __name__ == "__main__":
    main()
