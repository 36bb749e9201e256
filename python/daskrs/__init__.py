"""daskrs: run Dask collections, futures and SQL on a daskrs cluster.

    >>> import daskrs, dask.array as da
    >>> client = daskrs.Client()          # a local cluster of processes
    >>> da.ones((1000, 1000), chunks=100).sum().compute()
    1000000.0
"""

from __future__ import annotations

from daskrs._check import check_dask

check_dask()

from daskrs._client import Client  # noqa: E402
from daskrs._futures import (  # noqa: E402
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Future,
    as_completed,
    wait,
)
from daskrs._kube import KubeCluster, KubeError, make_cluster_spec  # noqa: E402
from daskrs._local import LocalCluster  # noqa: E402
from daskrs._native import __version__  # noqa: E402
from daskrs.errors import (  # noqa: E402
    AuthenticationError,
    ConnectError,
    DaskrsError,
    GatherError,
    NoWorkers,
    Rejected,
    SchedulerLost,
    TaskFailed,
    VersionMismatch,
)

__all__ = [
    "ALL_COMPLETED",
    "AuthenticationError",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Client",
    "Future",
    "ConnectError",
    "DaskrsError",
    "GatherError",
    "KubeCluster",
    "KubeError",
    "LocalCluster",
    "NoWorkers",
    "Rejected",
    "SchedulerLost",
    "TaskFailed",
    "VersionMismatch",
    "__version__",
    "as_completed",
    "make_cluster_spec",
    "wait",
]
