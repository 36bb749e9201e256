"""Futures: references to results the cluster holds for this client.

A :class:`Future` names one key of the client's session on the scheduler.
Every Future of a key shares one :class:`KeyState`, which the client's
listener thread moves to ``finished`` or ``error`` as the scheduler reports
the key. The cluster keeps the result while any Future of it is alive in
this process: when the last one is garbage collected, the client releases
the key and the workers drop it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import TYPE_CHECKING, Any, NamedTuple

from dask._task_spec import TaskRef

from daskrs.errors import DaskrsError

if TYPE_CHECKING:
    from daskrs._client import Client

log = logging.getLogger("daskrs")

PENDING = "pending"
FINISHED = "finished"
ERROR = "error"
CANCELLED = "cancelled"


class KeyState:
    """What the client knows of one key: its status, its result's format,
    or the exception it erred with; and the callbacks waiting for it."""

    __slots__ = ("status", "event", "format", "nbytes", "exception", "callbacks")

    def __init__(self) -> None:
        self.status = PENDING
        self.event = threading.Event()
        self.format = ""
        self.nbytes = 0
        self.exception: BaseException | None = None
        self.callbacks: list[Callable[[], None]] = []

    # The changes below are made under the client's lock; they return the
    # callbacks to call once it is released.

    def finish(self, fmt: str, nbytes: int) -> list[Callable[[], None]]:
        if self.status != PENDING:
            return []
        self.format, self.nbytes, self.status = fmt, nbytes, FINISHED
        return self._settled()

    def fail(self, exception: BaseException, status: str = ERROR) -> list[Callable[[], None]]:
        if self.status != PENDING:
            return []
        self.exception, self.status = exception, status
        return self._settled()

    def _settled(self) -> list[Callable[[], None]]:
        self.event.set()
        callbacks, self.callbacks = self.callbacks, []
        return callbacks

    def wait(self, timeout: float | None) -> None:
        # Short waits, so that Ctrl-C in the notebook is seen at once.
        if timeout is None:
            while not self.event.wait(0.2):
                pass
        elif not self.event.wait(timeout):
            raise FuturesTimeoutError(f"not done within {timeout} s")


class Future(TaskRef):
    """A result on the cluster, computed or on its way.

    Like ``distributed.Future``: ``result()``, ``done()``, ``exception()``,
    ``cancel()``, ``add_done_callback()``; passed to ``client.submit`` or
    into a dask collection, the task that takes it runs on the value.
    """

    # Dask recognises futures by this, or by their TaskRef base class.
    __dask_future__ = True

    def __init__(self, key: Any, client: Client) -> None:
        super().__init__(key)
        self.client = client
        self._name = client._key_name(key)
        self._state: KeyState | None = client._refer(self._name)

    @property
    def _st(self) -> KeyState:
        if self._state is None:
            raise DaskrsError(f"the future of {self._name} was released")
        return self._state

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def status(self) -> str:
        """``pending``, ``finished``, ``error``, ``cancelled`` or ``released``."""
        return "released" if self._state is None else self._state.status

    def done(self) -> bool:
        """Whether the key is computed, erred or cancelled."""
        return self._st.status != PENDING

    def cancelled(self) -> bool:
        return self._st.status == CANCELLED

    def result(self, timeout: float | None = None) -> Any:
        """The value, fetched from the cluster; raises what the task raised.
        ``concurrent.futures.TimeoutError`` after ``timeout`` seconds."""
        self._st.wait(timeout)
        if self._st.status != FINISHED:
            raise self._raisable()
        return self.client._gather_names([self._name])[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """What the task raised, or None when it finished."""
        self._st.wait(timeout)
        if self._st.status == FINISHED:
            return None
        return self._raisable()

    def traceback(self, timeout: float | None = None) -> Any:
        """The remote traceback of a task that raised, as text."""
        exc = self.exception(timeout)
        return None if exc is None else getattr(exc.__cause__, "text", None)

    def _raisable(self) -> BaseException:
        exc = self._st.exception
        if self._st.status == CANCELLED or exc is None:
            return CancelledError(f"{self._name} was cancelled")
        return exc

    def cancel(self) -> None:
        """Lets go of the key on the cluster: it stops if nothing else needs
        it, and this future (and every other of the key) is cancelled."""
        self.client.cancel(self)

    def release(self) -> None:
        """Lets go of this reference now instead of when it is collected."""
        state, self._state = self._state, None
        if state is not None:
            self.client._unrefer(self._name, state)

    def __dask_tokenize__(self) -> Any:
        return ("daskrs.Future", self.key)

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Calls ``fn(future)`` once the key is done (at once when it is),
        from the client's listener thread."""

        def call() -> None:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a callback's error is its own
                log.exception("a done callback of %s raised", self._name)

        self.client._on_done(self._st, call)

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self._name}>"

    def _repr_html_(self) -> str:
        import html

        return f"<b>Future: {html.escape(self._name)}</b> status: {html.escape(self.status)}"

    # A Future pickled into a task arrives as a reference to its key.
    def __reduce__(self) -> tuple[Any, ...]:
        return TaskRef, (self.key,)

    # Futures are equal when they name the same key, as TaskRefs are.
    __hash__ = TaskRef.__hash__
    __eq__ = TaskRef.__eq__


def futures_of(obj: Any) -> list[Future]:
    """The futures in a (nested) list, tuple, set or dict, in order, and
    those behind persisted dask collections."""
    out: list[Future] = []
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, Future):
            out.append(x)
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(x)))
        elif isinstance(x, dict):
            stack.extend(reversed(list(x.values())))
        elif (graph := dask_graph(x)) is not None:
            # A persisted collection's graph maps its keys to futures.
            stack.extend(reversed(list(graph.values())))
    return out


def dask_graph(x: Any) -> Any:
    """A dask collection's graph (built once: for some collections that
    costs), or None for anything else."""
    graph = getattr(x, "__dask_graph__", None)
    return None if isinstance(x, type) or not callable(graph) else graph()


FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


class DoneAndNotDoneFutures(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def wait(
    fs: Future | Iterable[Future] | Any,
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDoneFutures:
    """Waits until the futures are done (``ALL_COMPLETED``), one is
    (``FIRST_COMPLETED``), or one erred (``FIRST_EXCEPTION``); raises
    ``concurrent.futures.TimeoutError`` after ``timeout`` seconds. A
    persisted dask collection stands for the futures behind it."""
    if isinstance(fs, Future):
        fs = [fs]
    graph = dask_graph(fs)
    fs = futures_of(list(graph.values())) if graph is not None else list(fs)
    n = len(fs)
    if return_when == ALL_COMPLETED:
        enough: Callable[[int, set[str]], bool] = lambda done, _: done == n
    elif return_when == FIRST_COMPLETED:
        enough = lambda done, _: done > 0 or n == 0
    elif return_when == FIRST_EXCEPTION:
        enough = lambda done, ended: ERROR in ended or done == n
    else:
        raise ValueError(
            "return_when must be one of ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, "
            f"not {return_when!r}"
        )
    wait_until(fs, enough, timeout)
    done = {f for f in fs if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in fs if f not in done})


def wait_until(
    fs: list[Future], enough: Callable[[int, set[str]], bool], timeout: float | None = None
) -> None:
    """Waits until ``enough(done, ended)``: how many of ``fs`` are done, and
    the statuses they ended in. Counted as they end, so a long list is not
    looked over again each time one does."""
    changed = threading.Condition()
    done = 0
    ended: set[str] = set()

    def notify(f: Future) -> None:
        nonlocal done
        with changed:
            done += 1
            ended.add(f.status)
            changed.notify_all()

    for f in fs:
        f.add_done_callback(notify)
    deadline = None if timeout is None else time.monotonic() + timeout
    with changed:
        # Short waits, so that Ctrl-C in the notebook is seen at once.
        while not enough(done, ended):
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                raise FuturesTimeoutError(f"futures not done within {timeout} s")
            changed.wait(left)


class as_completed(Iterator[Any]):  # noqa: N801 - named as in distributed
    """Yields futures as they complete, in the order they do. With
    ``with_results=True`` yields ``(future, result)``; more futures can be
    ``add``ed while iterating."""

    def __init__(
        self,
        futures: Iterable[Future] = (),
        with_results: bool = False,
        raise_errors: bool = True,
    ) -> None:
        self._done: queue.Queue[Future] = queue.Queue()
        self._left = 0
        self._lock = threading.Lock()
        self.with_results = with_results
        self.raise_errors = raise_errors
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        with self._lock:
            self._left += 1
        future.add_done_callback(self._done.put)

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        with self._lock:
            return self._left

    def is_empty(self) -> bool:
        return self.count() == 0

    def __iter__(self) -> as_completed:
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._left == 0:
                raise StopIteration
        while True:
            try:
                f = self._done.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        with self._lock:
            self._left -= 1
        if not self.with_results:
            return f
        if f.status == FINISHED:
            return f, f.result()
        if self.raise_errors:
            raise f._raisable()
        return f, f.exception()

    def next_batch(self, block: bool = True) -> list[Any]:
        """Every future completed so far (at least one when ``block``)."""
        out = [next(self)] if block and not self.is_empty() else []
        while True:
            try:
                f = self._done.get_nowait()
            except queue.Empty:
                return out
            with self._lock:
                self._left -= 1
            out.append((f, f.result()) if self.with_results else f)

    def batches(self) -> Iterator[list[Any]]:
        while not self.is_empty():
            yield self.next_batch(block=True)
