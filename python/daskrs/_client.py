"""``daskrs.Client``: the notebook's handle on a daskrs cluster."""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping
from typing import Any

from daskrs import _graph, _serialize
from daskrs._native import NativeClient
from daskrs.errors import TaskFailed

_names = itertools.count(1)


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
    becomes Dask's scheduler, so ``x.compute()`` runs on it.
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
    ) -> None:
        from daskrs._local import LocalCluster

        self.cluster: LocalCluster | None = None
        self._default: Any = None
        if address is None:
            self.cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                timeout=timeout,
            )
            address = self.cluster.scheduler_address
        elif hasattr(address, "scheduler_address"):
            address = address.scheduler_address  # a cluster object
        try:
            self._native: NativeClient | None = NativeClient.connect(_address(address))
            if self.cluster is not None:
                self.wait_for_workers(n_workers, timeout=timeout)
        except BaseException:
            if self.cluster is not None:
                self.cluster.close()
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
        host = self.address.rsplit(":", 1)[0]
        return f"http://{host}:8787/"

    def close(self) -> None:
        """Disconnects; a local cluster started by this client stops."""
        if self._default is not None:
            self._default.__exit__(None, None, None)
            self._default = None
        self._native = None
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

    # ------------------------------------------------------------ dask

    def get(self, dsk: Mapping[Any, Any], keys: Any, **kwargs: Any) -> Any:
        """Dask's scheduler entry point: computes ``keys`` of the graph on
        the cluster and returns their values in the structure of ``keys``."""
        wanted = _graph.flatten_keys(keys)
        tasks = _graph.to_tasks(dsk)
        names = {k: _graph.key_name(k) for k in wanted}
        try:
            graph = self.native.run(tasks, sorted(set(names.values())), f"dask-{next(_names)}")
        except TaskFailed as failed:
            failed.raise_original()
        try:
            values = {}
            for key, name in names.items():
                fmt, data = graph.gather(name)
                values[key] = _serialize.loads(fmt, data)
        finally:
            graph.release()
        return _graph.pack(keys, values)

    # ------------------------------------------------------------ SQL

    def sql(self, query: str) -> Any:
        """Runs SQL on the cluster (the tables, S3 access and errors of
        ``daskrs sql``) and returns the answer as a ``pyarrow.Table``."""
        import pyarrow as pa

        tables = [pa.ipc.open_stream(pa.py_buffer(b)).read_all() for b in self.native.sql(query)]
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
