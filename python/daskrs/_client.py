"""``daskrs.Client``: the notebook's handle on a daskrs cluster."""

from __future__ import annotations

import collections
import html
import itertools
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError
from typing import Any

from daskrs import _graph, _serialize
from daskrs._futures import (
    CANCELLED,
    ERROR,
    FINISHED,
    PENDING,
    Future,
    KeyState,
    futures_of,
    wait_until,
)
from daskrs._native import NativeClient, NativeSession
from daskrs.errors import DaskrsError, Rejected, SchedulerLost, TaskFailed, VersionMismatch

log = logging.getLogger("daskrs")

# How a future ends without a value.
FAILED = frozenset((ERROR, CANCELLED))


def _address(address: str) -> str:
    for prefix in ("tcp://", "grpc://"):
        if address.startswith(prefix):
            return address[len(prefix) :]
    if "://" in address:
        scheme = address.split("://", 1)[0]
        raise ValueError(f"cannot connect to {address!r}: daskrs speaks tcp://, not {scheme}://")
    return address


class Client:
    """Connects to a daskrs scheduler, runs Dask collections and SQL on it.

    ``Client("host:8786")`` (or ``"tcp://host:8786"``) connects to a running
    scheduler; ``Client()`` starts a local cluster of processes, which is
    closed with the client. Unless ``set_as_default=False``, the client
    becomes Dask's scheduler, so ``x.compute()`` runs on it. ``token`` is the
    cluster's token (default: ``$DASKRS_TOKEN``); a local cluster makes its own.
    ``tls_dir`` is a directory of the cluster's TLS certificates for this
    client, ``ca.crt``, ``tls.crt`` and ``tls.key`` (default:
    ``$DASKRS_TLS_DIR``, else plain text).
    """

    # Dask asks this of a client before it hands it a graph.
    asynchronous = False

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        memory_limit: int | None = None,
        set_as_default: bool = True,
        timeout: float = 60.0,
        check_versions: bool = True,
        token: str | None = None,
        tls_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from daskrs._local import LocalCluster, token_for

        self.cluster: LocalCluster | None = None
        self._cluster_object: Any = None
        self._default: Any = None
        self._session: NativeSession | None = None
        self._listener: threading.Thread | None = None
        self._closing = False
        # Futures by key: how many this process holds, and what is known.
        self._lock = threading.Lock()
        self._refs: dict[str, int] = {}
        self._states: dict[str, KeyState] = {}
        self._dropped: collections.deque[tuple[str, KeyState]] = collections.deque()
        if address is None:
            self.cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                timeout=timeout,
            )
            address = self.cluster.scheduler_address
            token = self.cluster.token
        elif hasattr(address, "scheduler_address"):
            # A cluster object (KubeCluster, LocalCluster): its address,
            # token and client certificate; kept alive as long as the
            # client, since it may hold the port forwards.
            self._cluster_object = address
            token = token or getattr(address, "token", None)
            if tls_dir is None:
                tls_dir = getattr(address, "tls_dir", None)
            address = address.scheduler_address
        target = _address(address)
        if token is None:
            token = token_for(target) or os.environ.get("DASKRS_TOKEN") or None
        try:
            if tls_dir is None and self.cluster is None:
                tls_dir = os.environ.get("DASKRS_TLS_DIR") or None
            self._native: NativeClient | None = NativeClient.connect(
                target, token, None if tls_dir is None else os.fspath(tls_dir)
            )
            self._session = self._native.session(f"client-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            self._listener = threading.Thread(
                target=self._listen, args=(self._session,), name="daskrs-events", daemon=True
            )
            self._listener.start()
            if self.cluster is not None:
                self.wait_for_workers(n_workers, timeout=timeout)
            if check_versions:
                self._check_versions()
        except BaseException:
            self.close()  # the listener, the session and a local cluster
            raise
        if set_as_default:
            import dask

            # Shuffles move data between tasks, never through a disk the
            # workers would have to share.
            self._default = dask.config.set(
                {"scheduler": self, "dataframe.shuffle.method": "tasks"}
            )
            self._default.__enter__()

    # ------------------------------------------------------------ lifecycle

    @property
    def native(self) -> NativeClient:
        if self._native is None:
            raise RuntimeError("the client is closed")
        return self._native

    @property
    def address(self) -> str:
        return self.native.address

    @property
    def dashboard_link(self) -> str:
        if self.cluster is not None:
            return self.cluster.dashboard_link
        if self._cluster_object is not None and hasattr(self._cluster_object, "dashboard_link"):
            return str(self._cluster_object.dashboard_link)
        host = self.address.rsplit(":", 1)[0]
        return f"http://{host}:8787/"

    def close(self) -> None:
        """Disconnects, which releases everything the client's futures held;
        a local cluster started by this client stops."""
        if self._default is not None:
            self._default.__exit__(None, None, None)
            self._default = None
        self._closing = True
        if self._listener is not None and self._listener is not threading.current_thread():
            self._listener.join()
        self._listener = None
        self._session = None
        self._native = None
        self._fail_pending(CancelledError("the client was closed"), CANCELLED)
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ------------------------------------------------------------ cluster

    def scheduler_info(self) -> dict[str, Any]:
        """The scheduler's view: workers (threads, memory, status), task
        counts by state, and tasks waiting for a kind no worker runs."""
        info = dict(self.native.info())
        info["address"] = self.address
        info["dashboard_link"] = self.dashboard_link
        return info

    def _check_versions(self) -> None:
        """Refuses a cluster whose scheduler or Python workers run other
        versions of daskrs, Python, cloudpickle or dask than this client."""
        import json

        from daskrs import _versions
        from daskrs._native import __version__ as native

        info = self.native.info()
        here = _versions.versions()
        problems = []
        if info["scheduler_version"] != native:
            problems.append(f"the scheduler runs daskrs {info['scheduler_version']}, this client {native}")
        for w in info["workers"]:
            if w["python"]:
                diff = _versions.mismatches(here, json.loads(w["python"]))
                if diff:
                    problems.append(f"worker {w['name']!r}: " + ", ".join(diff))
        if problems:
            raise VersionMismatch(
                "this client and the cluster run versions that do not work together: "
                + "; ".join(problems)
                + ". Install the same versions where the notebook and the workers run "
                "(or pass check_versions=False)."
            )

    def _python_threads(self) -> int:
        """The threads of the workers that run Python tasks."""
        return sum(w["nthreads"] for w in self.native.info()["workers"] if w["python"])

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        """Blocks until at least ``n_workers`` workers have joined."""
        self.native.wait_for_workers(n_workers, 3600.0 if timeout is None else timeout)

    def _repr_html_(self) -> str:
        try:
            info = self.scheduler_info()
        except Exception as exc:  # noqa: BLE001 - show what went wrong instead
            return f"<b>daskrs.Client</b>: {html.escape(str(exc))}"
        workers = info["workers"]
        threads = sum(w["nthreads"] for w in workers)
        memory = sum(w["memory_limit"] for w in workers)
        rows = "".join(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td></tr>".format(
                html.escape(w["name"]),
                html.escape(w["address"]),
                html.escape(w["status"]),
                w["nthreads"],
                _bytes(w["memory_bytes"]),
                _bytes(w["memory_limit"]),
            )
            for w in workers
        )
        link = html.escape(self.dashboard_link)
        return (
            "<div><b>daskrs.Client</b> "
            f"<code>{html.escape(self.address)}</code>: "
            f"{len(workers)} workers, {threads} threads, {_bytes(memory)} memory; "
            f'dashboard: <a href="{link}" target="_blank">{link}</a>'
            "<table><tr><th>worker</th><th>address</th><th>status</th>"
            f"<th>threads</th><th>memory</th></tr>{rows}</table></div>"
        )

    def __repr__(self) -> str:
        state = "closed" if self._native is None else self.address
        return f"<daskrs.Client {state}>"

    # ------------------------------------------------------------ events

    @property
    def session(self) -> NativeSession:
        if self._session is None:
            raise RuntimeError("the client is closed")
        return self._session

    def _listen(self, session: NativeSession) -> None:
        """The listener thread: applies what the scheduler reports."""
        while not self._closing:
            self._drain()
            try:
                events = session.events(0.2)
            except Exception as exc:  # noqa: BLE001 - whatever ended the stream
                if not self._closing:
                    lost = exc if isinstance(exc, DaskrsError) else SchedulerLost(str(exc))
                    self._fail_pending(lost, ERROR)
                return
            for ev in events:
                try:
                    self._apply(ev)
                except Exception:  # noqa: BLE001 - never let the listener die
                    log.exception("daskrs: could not apply event %r", ev[:2])

    def _apply(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "done":
            _, name, fmt, nbytes = ev
            self._settle(name, lambda st: st.finish(fmt, nbytes))
        elif kind == "erred":
            _, name, failed_key, worker, error, exception = ev
            message = f"task {failed_key!r} failed on worker {worker!r}: {error}"
            if failed_key != name:
                message = f"{name!r} depends on {message}"
            failed = TaskFailed(message, key=failed_key, worker=worker, error=error, exception=exception)
            exc = failed.original() or failed
            self._settle(name, lambda st: st.fail(exc))
        elif kind == "rejected":
            _, names, error = ev
            exc = Rejected(f"the cluster refused the submission: {error}")
            for name in names:
                self._settle(name, lambda st: st.fail(exc))

    def _settle(self, name: str, change: Callable[[KeyState], list[Callable[[], None]]]) -> None:
        with self._lock:
            state = self._states.get(name)
            callbacks = change(state) if state is not None else []
        for cb in callbacks:
            cb()

    def _fail_pending(self, exc: BaseException, status: str) -> None:
        with self._lock:
            callbacks = [cb for st in self._states.values() for cb in st.fail(exc, status)]
        for cb in callbacks:
            cb()

    def _on_done(self, state: KeyState, call: Callable[[], None]) -> None:
        with self._lock:
            if state.status == PENDING:
                state.callbacks.append(call)
                return
        call()

    # ------------------------------------------------------------ references

    @staticmethod
    def _key_name(key: Any) -> str:
        return _graph.key_name(key)

    def _refer(self, name: str) -> KeyState:
        with self._lock:
            self._refs[name] = self._refs.get(name, 0) + 1
            state = self._states.get(name)
            if state is None:
                state = self._states[name] = KeyState()
            return state

    def _unrefer(self, name: str, state: KeyState) -> None:
        # Called from Future.__del__, at any point of any thread (even one
        # that holds the lock): only queued here, applied by `_drain`.
        self._dropped.append((name, state))

    def _drain(self) -> None:
        """Applies dropped references; releases keys no future holds."""
        if not self._dropped:
            return
        names = []
        with self._lock:
            while self._dropped:
                name, state = self._dropped.popleft()
                if self._states.get(name) is not state:
                    continue  # cancelled meanwhile: the key was let go of then
                n = self._refs[name] - 1
                if n:
                    self._refs[name] = n
                else:
                    del self._refs[name]
                    del self._states[name]
                    names.append(name)
            session = self._session
        if names and session is not None and not self._closing:
            try:
                session.release(names)
            except DaskrsError:
                pass  # the session is gone, and with it what it held

    # ------------------------------------------------------------ futures

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: Any = None,
        pure: bool = True,
        retries: int = 0,
        priority: int = 0,
        **kwargs: Any,
    ) -> Future:
        """Runs ``func(*args, **kwargs)`` on the cluster; futures among the
        arguments (also inside lists, tuples and dicts) are replaced by
        their values there. ``pure=False`` runs it again for the same
        arguments."""
        _check_callable(func, "submit")
        if key is None:
            key = _task_key(func, args, kwargs, pure)
        (future,) = self._submit({key: _task(key, func, args, kwargs)}, [key], retries, priority)
        return future

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        key: Any = None,
        pure: bool = True,
        retries: int = 0,
        priority: int = 0,
        **kwargs: Any,
    ) -> list[Future]:
        """``submit`` for each item of the iterables, in one submission."""
        from dask.base import tokenize

        _check_callable(func, "map")
        items = list(zip(*iterables))
        if isinstance(key, (list, tuple)):
            if len(key) != len(items):
                raise ValueError(f"map got {len(key)} keys for {len(items)} items")
            keys = list(key)
        else:
            prefix = key if isinstance(key, str) else _funcname(func)
            base = tokenize(func, kwargs) if pure else ""
            keys = [f"{prefix}-{tokenize(base, args) if pure else _unique()}" for args in items]
        graph = {k: _task(k, func, args, kwargs) for k, args in zip(keys, items)}
        return self._submit(graph, keys, retries, priority)

    def scatter(self, data: Any, *, hash: bool = True) -> Any:  # noqa: A002 - as in distributed
        """Moves local data to the cluster: a future for a value, a list of
        futures for a list (or tuple, or set), a dict of futures for a dict."""
        from dask._task_spec import DataNode
        from dask.base import tokenize

        def key_of(value: Any) -> str:
            name = type(value).__name__
            return f"{name}-{tokenize(value) if hash else _unique()}"

        if isinstance(data, dict):
            keys = list(data)
            values = list(data.values())
        elif isinstance(data, (list, tuple, set, frozenset)):
            values = list(data)
            keys = [key_of(v) for v in values]
        else:
            values = [data]
            keys = [key_of(data)]
        graph = {k: DataNode(k, v) for k, v in zip(keys, values)}
        futures = self._submit(graph, keys, 0, 0)
        if isinstance(data, dict):
            return dict(zip(keys, futures))
        if isinstance(data, (list, tuple, set, frozenset)):
            return type(data)(futures) if not isinstance(data, (set, frozenset)) else futures
        return futures[0]

    def gather(self, futures: Any, errors: str = "raise") -> Any:
        """The values of futures, in the structure given (a future, or lists,
        tuples, sets and dicts of them). ``errors="skip"`` leaves out those
        that erred."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        futs = futures_of(futures)
        wanted: dict[str, None] = {}  # each key once, in order
        for f in futs:
            f._st.wait(None)
            if f._st.status != FINISHED:
                if errors == "raise":
                    raise f._raisable()
            else:
                wanted[f._name] = None
        names = list(wanted)
        values = dict(zip(names, self._gather_names(names)))
        skip = object()

        def pack(x: Any) -> Any:
            if isinstance(x, Future):
                return values.get(x._name, skip)
            if isinstance(x, (list, tuple, set, frozenset)):
                packed = [v for v in (pack(i) for i in x) if v is not skip]
                return packed if isinstance(x, list) else type(x)(packed)
            if isinstance(x, dict):
                return {k: v for k, v in ((k, pack(i)) for k, i in x.items()) if v is not skip}
            return x

        return pack(futures)

    def cancel(self, futures: Any) -> None:
        """Lets go of the futures' keys on the cluster (running tasks that
        nothing else needs stop) and marks every future of them cancelled."""
        names = []
        callbacks: list[Callable[[], None]] = []
        with self._lock:
            for f in futures_of(futures if not isinstance(futures, Future) else [futures]):
                state = self._states.pop(f._name, None)
                self._refs.pop(f._name, None)
                if state is not None:
                    names.append(f._name)
                    callbacks += state.fail(CancelledError(f"{f._name} was cancelled"), CANCELLED)
        if names:
            self.session.release(names)
        for cb in callbacks:
            cb()

    def persist(self, collections: Any, optimize_graph: bool = True, **kwargs: Any) -> Any:
        """Starts computing dask collections on the cluster and returns them
        backed by futures: their results stay on the workers until the
        returned collections are garbage collected."""
        from dask.base import collections_to_expr
        from dask.core import flatten

        singleton = not isinstance(collections, (list, tuple, set, frozenset))
        colls = [collections] if singleton else list(collections)
        expr = collections_to_expr(colls, optimize_graph).optimize()
        keys = expr.__dask_keys__()
        wanted = list(flatten(keys))
        futures = dict(zip(wanted, self._submit(expr, wanted, 0, None)))
        out = []
        for c, ks in zip(colls, keys):
            rebuild, args = c.__dask_postpersist__()
            out.append(rebuild({k: futures[k] for k in flatten(ks)}, *args))
        return out[0] if singleton else out

    def compute(
        self, collections: Any, sync: bool = False, optimize_graph: bool = True, **kwargs: Any
    ) -> Any:
        """Starts computing dask collections on the cluster: a future of each
        one's final value (a list for a list), or the values with
        ``sync=True``. Futures given pass through."""
        from dask._task_spec import Alias, List, Task
        from dask.base import collections_to_expr, tokenize

        def refs(keys: Any) -> Any:
            return List(*(refs(k) for k in keys)) if isinstance(keys, list) else Alias(keys)

        singleton = not isinstance(collections, (list, tuple, set, frozenset))
        colls = [collections] if singleton else list(collections)
        futures = []
        for c in colls:
            if isinstance(c, Future):
                futures.append(c)
                continue
            expr = collections_to_expr([c], optimize_graph).optimize()
            (keys,) = expr.__dask_keys__()
            func, args = c.__dask_postcompute__()
            key = f"finalize-{tokenize(expr, func, args)}"
            graph = dict(expr.__dask_graph__())
            graph[key] = Task(key, _serialize.Function(func), refs(keys), *args)
            futures += self._submit(graph, [key], 0, None)
        if sync:
            return self.gather(futures[0] if singleton else futures)
        return futures[0] if singleton else futures

    def _submit(
        self, dsk: Any, wanted: list[Any], retries: int, priority: int | None
    ) -> list[Future]:
        """Submits a graph into the session; futures of the wanted keys."""
        self._drain()
        tasks = _graph.to_tasks(dsk, retries=retries, priority=priority, keep=wanted, threads=self._python_threads)
        # The futures exist before the scheduler can report their keys.
        futures = [Future(k, self) for k in wanted]
        self.session.submit(tasks, [f._name for f in futures])
        return futures

    def _gather_names(self, names: list[str]) -> list[Any]:
        if not names:
            return []
        got = self.session.gather_many(names)
        return [_serialize.loads(fmt, data) for fmt, data in got]

    # ------------------------------------------------------------ dask

    def get(self, dsk: Mapping[Any, Any], keys: Any, **kwargs: Any) -> Any:
        """Dask's scheduler entry point: computes ``keys`` of the graph on
        the cluster and returns their values in the structure of ``keys``.
        Ctrl-C cancels what it started."""
        wanted = _graph.flatten_keys(keys)
        futures = self._submit(dsk, wanted, 0, None)
        if _called_by_dask_persist():
            # Dask releases before 2026 persist through `get`: the results
            # stay on the cluster, as futures.
            return _graph.pack(keys, dict(zip(wanted, futures)))
        try:
            # The first error ends the wait, whichever future it is.
            wait_until(futures, lambda done, ended: done == len(futures) or bool(ended & FAILED))
            for f in futures:
                if f.status in FAILED:
                    raise f._raisable()
            values = dict(zip(wanted, self.gather(futures)))
        finally:
            for f in futures:
                f.release()
        return _graph.pack(keys, values)

    # ------------------------------------------------------------ SQL

    def sql(
        self, query: str, tables: Mapping[str, Any] | None = None, *, compute: bool = True
    ) -> Any:
        """Runs SQL on the cluster (the tables, S3 access and errors of
        ``daskrs sql``) and returns the answer as a ``pyarrow.Table``.

        ``tables`` names more tables the query may read: futures whose
        values are ``pyarrow.Table``s (or pandas DataFrames, turned into
        Arrow on the worker), or local ``pyarrow.Table``s, record batches
        and DataFrames, sent to the cluster first. Their data moves between
        workers as Arrow; none of it passes through this process.

        ``compute=False`` returns at once a future of the answer, kept on a
        worker: pass it to ``submit`` (the task gets a ``pyarrow.Table``) or
        as a table of a later query."""
        inputs = []
        held = []  # the input tables' futures, until the query refers to them
        for name, value in (tables or {}).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"table names are non-empty strings, not {name!r}")
            future, schema = self._sql_input(name, value)
            inputs.append((name, future._name, schema))
            held.append(future)
        planned = self.native.plan_sql(query, inputs)
        local = planned.local
        if local is not None:
            import pyarrow as pa

            table = pa.ipc.open_stream(pa.py_buffer(local)).read_all()
            return table if compute else self.scatter(table, hash=False)
        answer = Future(f"sql-{_unique()}", self)
        self.session.submit_query(planned, answer._name)
        del held
        if not compute:
            return answer
        try:
            return answer.result()
        finally:
            answer.release()

    def _sql_input(self, name: str, value: Any) -> tuple[Future, bytes]:
        """A table for ``sql``: its future on the cluster and its schema."""
        import pyarrow as pa

        if isinstance(value, Future):
            kind, schema = self.submit(_table_schema, value, name, pure=False).result()
            if kind == "pandas":
                value = self.submit(_to_arrow, value, pure=False)
                kind, schema = self.submit(_table_schema, value, name, pure=False).result()
            return value, schema
        if isinstance(value, pa.RecordBatch):
            value = pa.Table.from_batches([value])
        elif not isinstance(value, pa.Table):
            pd = sys.modules.get("pandas")
            if pd is None or not isinstance(value, pd.DataFrame):
                raise TypeError(
                    f"table {name!r} is a {type(value).__module__}.{type(value).__qualname__}; "
                    "give a pyarrow.Table, a pandas.DataFrame or a future of one"
                )
            value = pa.Table.from_pandas(value)
        return self.scatter(value, hash=False), _schema_ipc(value.schema)


def _schema_ipc(schema: Any) -> bytes:
    """A schema as an Arrow IPC stream without batches."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema):
        pass
    return bytes(sink.getvalue().to_pybytes())


def _table_schema(value: Any, name: str) -> tuple[str, bytes | None]:
    """On a worker: ``("arrow", schema)`` of a table, ``("pandas", None)``
    for a DataFrame to turn into one first."""
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return "arrow", _schema_ipc(value.schema)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        return "pandas", None
    raise TypeError(
        f"table {name!r} is a future of a {type(value).__module__}.{type(value).__qualname__}; "
        "SQL reads futures of pyarrow.Table or pandas.DataFrame"
    )


def _to_arrow(df: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(df)


def _task(key: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The task ``func(*args, **kwargs)``; futures in the arguments, also
    inside lists, tuples, sets and dicts, become its dependencies."""
    from dask._task_spec import Task, parse_input

    return Task(
        key,
        _serialize.Function(func),
        *(parse_input(a) for a in args),
        **{k: parse_input(v) for k, v in kwargs.items()},
    )


def _check_callable(func: Any, method: str) -> None:
    if not callable(func):
        raise TypeError(f"the first argument of {method} must be callable, not {type(func).__name__}")


def _funcname(func: Any) -> str:
    from dask.utils import funcname

    return funcname(func)


def _task_key(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], pure: bool) -> str:
    from dask.base import tokenize

    token = tokenize(func, args, kwargs) if pure else _unique()
    return f"{_funcname(func)}-{token}"


_process_token = uuid.uuid4().hex[:16]
_counter = itertools.count()


def _unique() -> str:
    """A token no other key of this process has (faster than a uuid each)."""
    return f"{_process_token}-{next(_counter)}"


def _called_by_dask_persist() -> bool:
    """Whether ``dask.persist`` (of a dask release without the scheduler
    persist protocol) is the caller of ``Client.get``."""
    frame = sys._getframe(2)
    return frame.f_code.co_name == "persist" and frame.f_globals.get("__name__") == "dask.base"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
