"""A real local cluster of processes for the tests: one scheduler and two
workers (``daskrs`` from ``$DASKRS_BIN``), shared by a test module."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import cloudpickle
import pytest

import daskrs


@pytest.fixture(autouse=True)
def _tests_travel_by_value(request: pytest.FixtureRequest) -> None:
    """Workers cannot import the test modules: their functions are pickled
    with their code, as a notebook's are."""
    if request.module is not None:
        cloudpickle.register_pickle_by_value(request.module)


@pytest.fixture(scope="module")
def client() -> Iterator[daskrs.Client]:
    with daskrs.Client(n_workers=2, threads_per_worker=1, memory_limit=2 << 30) as c:
        yield c


@pytest.fixture
def daskrs_bin() -> str:
    return daskrs._local.find_binary()


def start_worker(
    binary: str,
    scheduler: str,
    name: str,
    *,
    token: str,
    python: str | None = None,
    tls_dir: str | None = None,
) -> subprocess.Popen[bytes]:
    """A worker process of its own, which the test stops."""
    args = [
        binary,
        "worker",
        "--scheduler",
        scheduler,
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        "--nthreads",
        "1",
        "--memory-limit",
        str(1 << 30),
    ]
    if python:
        args += ["--python", python]
    if tls_dir:
        args += ["--tls-dir", tls_dir]
    env = {**os.environ, "DASKRS_TOKEN": token}
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
