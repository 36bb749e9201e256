"""A local cluster of processes: one ``daskrs scheduler`` and N ``daskrs
worker`` processes on loopback, whose workers run Python tasks with this
interpreter. It lives as long as the object, like ``distributed.LocalCluster``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from daskrs.errors import DaskrsError


def find_binary() -> str:
    """The ``daskrs`` command: ``$DASKRS_BIN``, else the one on ``PATH``."""
    explicit = os.environ.get("DASKRS_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise DaskrsError(f"DASKRS_BIN={explicit} is not an executable file")
        return explicit
    found = shutil.which("daskrs")
    if found:
        return found
    raise DaskrsError(
        "a local cluster needs the `daskrs` command: install it "
        "(cargo install --path client) or set DASKRS_BIN to its path"
    )


def _memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


# The tokens of the local clusters this process started, by scheduler
# address: a client of this process connecting to one by its address needs
# no token of its own.
_TOKENS: dict[str, str] = {}


def token_for(address: str) -> str | None:
    """The token of a local cluster this process started at ``address``."""
    return _TOKENS.get(address)


class LocalCluster:
    """A scheduler and workers as separate processes on this machine."""

    def __init__(
        self,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        memory_limit: int | None = None,
        *,
        python: str | None = None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> None:
        if n_workers < 0 or threads_per_worker < 1:
            raise ValueError("n_workers must be >= 0 and threads_per_worker >= 1")
        self._binary = find_binary()
        self._dir = tempfile.mkdtemp(prefix="daskrs-local-")
        self._procs: list[subprocess.Popen[bytes]] = []
        #: The cluster's token, made for it: even on loopback, other users
        #: of this machine cannot use the cluster.
        self.token = secrets.token_hex(32)
        self._env = {**os.environ, **(env or {}), "DASKRS_TOKEN": self.token}
        self._python = python or sys.executable
        self.threads_per_worker = threads_per_worker
        self.memory_limit = memory_limit or _memory() // max(1, n_workers)
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._dir)
        try:
            ports = self._start(
                "scheduler",
                ["scheduler", "--host", "127.0.0.1", "--port", "0", "--http-port", "0"],
                timeout,
            )
            self.scheduler_address = f"127.0.0.1:{ports['grpc']}"
            _TOKENS[self.scheduler_address] = self.token
            # The dashboard keeps the token in a cookie once opened so.
            self.dashboard_link = f"http://127.0.0.1:{ports['http']}/?token={self.token}"
            self._workers = 0
            #: Each worker's HTTP address (``/metrics``, ``/health``).
            self.worker_links: dict[str, str] = {}
            for _ in range(n_workers):
                self.add_worker(timeout=timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, args: list[str], timeout: float) -> dict[str, int]:
        port_file = Path(self._dir, f"{name}.ports")
        proc = subprocess.Popen(
            [self._binary, *args, "--port-file", str(port_file)],
            env=self._env,
            stdin=subprocess.DEVNULL,
        )
        self._procs.append(proc)
        deadline = time.monotonic() + timeout
        while True:
            if port_file.exists():
                try:
                    return json.loads(port_file.read_text())
                except json.JSONDecodeError:
                    pass  # written but not yet complete
            code = proc.poll()
            if code is not None:
                raise DaskrsError(f"the local {name} exited with status {code} before it listened")
            if time.monotonic() > deadline:
                raise DaskrsError(f"the local {name} did not start listening within {timeout} s")
            time.sleep(0.02)

    def add_worker(self, timeout: float = 60.0) -> None:
        """Starts one more worker process."""
        self._workers += 1
        name = f"local-{self._workers}"
        ports = self._start(
            f"worker-{self._workers}",
            [
                "worker",
                "--scheduler", self.scheduler_address,
                "--name", name,
                "--host", "127.0.0.1",
                "--port", "0",
                "--http-port", "0",
                "--nthreads", str(self.threads_per_worker),
                "--memory-limit", str(self.memory_limit),
                "--local-dir", self._dir,
                "--python", self._python,
            ],
            timeout,
        )
        self.worker_links[name] = f"http://127.0.0.1:{ports['http']}/"

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The scheduler's process first, then the workers'."""
        return list(self._procs)

    def close(self) -> None:
        _TOKENS.pop(getattr(self, "scheduler_address", ""), None)
        self._finalizer()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalCluster({self.scheduler_address!r}, workers={self._workers})"


def _stop(procs: list[subprocess.Popen[bytes]], directory: str) -> None:
    # Workers first, so that none is left reconnecting to a closed scheduler.
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    shutil.rmtree(directory, ignore_errors=True)
