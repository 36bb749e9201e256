"""The client's life: connect, look at the cluster, close."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

import daskrs
from conftest import start_worker


def test_client_connects_by_host_port_and_tcp_url(client: daskrs.Client) -> None:
    for address in (client.address, f"tcp://{client.address}"):
        with daskrs.Client(address, set_as_default=False) as other:
            assert len(other.scheduler_info()["workers"]) == 2


def test_scheduler_info_shows_workers_threads_memory_and_python(client: daskrs.Client) -> None:
    info = client.scheduler_info()
    workers = info["workers"]
    assert sorted(w["name"] for w in workers) == ["local-1", "local-2"]
    assert all(w["nthreads"] == 1 for w in workers)
    assert all(w["memory_limit"] == 2 << 30 for w in workers)
    assert all("python" in w["kinds"] for w in workers)
    assert info["scheduler_version"] == daskrs.__version__
    assert info["dashboard_link"].startswith("http://127.0.0.1:")


def test_repr_html_names_workers_threads_memory_and_dashboard(client: daskrs.Client) -> None:
    page = client._repr_html_()
    assert "2 workers, 2 threads, 4.0 GiB memory" in page
    assert "local-1" in page and "local-2" in page
    assert f'href="{client.dashboard_link}"' in page


def test_wait_for_workers_says_how_many_joined(client: daskrs.Client) -> None:
    client.wait_for_workers(2, timeout=5)
    with pytest.raises(daskrs.ConnectError, match="only 2 of 3 workers joined"):
        client.wait_for_workers(3, timeout=0.3)


def test_nothing_listening_is_a_connect_error() -> None:
    with pytest.raises(daskrs.ConnectError, match="is a scheduler running there"):
        daskrs.Client("127.0.0.1:1", set_as_default=False)


def test_an_address_of_another_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="daskrs speaks tcp://, not tls://"):
        daskrs.Client("tls://127.0.0.1:8786", set_as_default=False)


def test_a_local_cluster_stops_with_its_client() -> None:
    c = daskrs.Client(n_workers=1, set_as_default=False)
    assert c.cluster is not None
    procs = c.cluster.processes
    assert len(procs) == 2 and all(p.poll() is None for p in procs)
    c.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        c.scheduler_info()


def test_a_worker_with_other_versions_is_refused_at_connect(daskrs_bin: str) -> None:
    other = os.environ.get("DASKRS_OTHER_PYTHON")
    if not other:
        pytest.skip("DASKRS_OTHER_PYTHON names no second environment with daskrs installed")
    cluster = daskrs.LocalCluster(n_workers=0)
    worker = start_worker(
        daskrs_bin, cluster.scheduler_address, "other", token=cluster.token, python=other
    )
    try:
        with daskrs.Client(
            cluster.scheduler_address, set_as_default=False, check_versions=False
        ) as c:
            c.wait_for_workers(1, timeout=60)
        listeners = sum(t.name == "daskrs-events" for t in threading.enumerate())
        with pytest.raises(
            daskrs.VersionMismatch, match=r"worker 'other': .*dask \S+ here, \S+ there"
        ):
            daskrs.Client(cluster.scheduler_address, set_as_default=False)
        # The refused client left nothing running.
        assert sum(t.name == "daskrs-events" for t in threading.enumerate()) == listeners
    finally:
        worker.terminate()
        worker.wait()
        cluster.close()


def start_scheduler(
    daskrs_bin: str, tmp_path: pathlib.Path, token: str, args: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """A scheduler process on loopback ports of its choosing, its token from
    the environment as on a cluster's pod; with the ports it got, once it
    listens."""
    ports = tmp_path / "ports"
    scheduler = subprocess.Popen(
        [daskrs_bin, "scheduler", "--host", "127.0.0.1", "--port", "0", "--http-port", "0"]
        + ["--port-file", str(ports), *(args or [])],
        env={**os.environ, "DASKRS_TOKEN": token},
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            return scheduler, json.loads(ports.read_text())
        except (OSError, json.JSONDecodeError):  # not yet (fully) written
            if scheduler.poll() is not None or time.monotonic() > deadline:
                scheduler.kill()
                scheduler.wait()
                raise AssertionError("the scheduler did not listen within 30 s") from None
            time.sleep(0.02)


def test_a_cluster_refuses_clients_without_its_token_and_says_so(
    daskrs_bin: str, tmp_path: pathlib.Path
) -> None:
    import urllib.error
    import urllib.request

    # A scheduler as on a cluster's pod: its token from the environment.
    token = "a-token-for-this-test"
    scheduler, got = start_scheduler(daskrs_bin, tmp_path, token)
    try:
        address, http = f"127.0.0.1:{got['grpc']}", f"http://127.0.0.1:{got['http']}/"
        with pytest.raises(daskrs.AuthenticationError, match="requires a token"):
            daskrs.Client(address, set_as_default=False, check_versions=False)
        with pytest.raises(daskrs.AuthenticationError, match="token presented is wrong"):
            daskrs.Client(address, token="nope", set_as_default=False, check_versions=False)
        with pytest.raises(ValueError, match="not a valid token"):
            daskrs.Client(address, token="has space", set_as_default=False)
        with daskrs.Client(address, token=token, set_as_default=False) as client:
            assert client.scheduler_info()["workers"] == []
        # From the environment, as on a cluster's pods and in a shell.
        os.environ["DASKRS_TOKEN"] = token
        try:
            with daskrs.Client(address, set_as_default=False) as client:
                assert client.scheduler_info()["workers"] == []
        finally:
            del os.environ["DASKRS_TOKEN"]
        # HTTP: the probes are open, the API is not, the token logs a browser in.
        with urllib.request.urlopen(http + "health", timeout=10) as page:
            assert page.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(http + "api/v1/status", timeout=10)
        assert refused.value.code == 401
        assert "requires a token" in refused.value.read().decode()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"{http}?token={token}", timeout=10) as page:
            assert page.status == 200 and "/api/v1/status" in page.read().decode()
        with opener.open(http + "api/v1/status", timeout=10) as page:
            assert page.status == 200
    finally:
        scheduler.kill()
        scheduler.wait()


def test_a_local_cluster_has_a_token_its_clients_use(client: daskrs.Client) -> None:
    assert client.cluster is not None
    assert len(client.cluster.token) == 64
    assert client.dashboard_link.endswith(f"?token={client.cluster.token}")
    # A client of this process reaches the cluster by its address alone.
    with daskrs.Client(client.cluster.scheduler_address, set_as_default=False) as other:
        assert len(other.scheduler_info()["workers"]) == 2


def test_a_tls_cluster_serves_clients_with_its_certificates_only(
    daskrs_bin: str, tmp_path: pathlib.Path
) -> None:
    # A cluster's certificates, as `daskrs certs` makes them outside Kubernetes.
    certs = tmp_path / "certs"
    subprocess.run([daskrs_bin, "certs", "--out", str(certs)], check=True, capture_output=True)
    other = tmp_path / "other"
    subprocess.run([daskrs_bin, "certs", "--out", str(other)], check=True, capture_output=True)
    token = "a-token-for-this-test"
    scheduler, got = start_scheduler(
        daskrs_bin, tmp_path, token, ["--tls-dir", str(certs / "scheduler")]
    )
    worker = None
    try:
        address = f"127.0.0.1:{got['grpc']}"
        worker = start_worker(
            daskrs_bin,
            address,
            "w",
            token=token,
            python=sys.executable,
            tls_dir=str(certs / "worker"),
        )
        with pytest.raises(daskrs.AuthenticationError, match="TLS connections only"):
            daskrs.Client(address, token=token, set_as_default=False, check_versions=False)
        with pytest.raises(daskrs.AuthenticationError, match="certificate"):
            daskrs.Client(
                address,
                token=token,
                tls_dir=other / "client",
                set_as_default=False,
                check_versions=False,
            )
        with pytest.raises(ValueError, match="ca.crt"):
            daskrs.Client(address, token=token, tls_dir=tmp_path, set_as_default=False)
        with daskrs.Client(
            address, token=token, tls_dir=certs / "client", set_as_default=False
        ) as client:
            client.wait_for_workers(1, timeout=60)
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        # From the environment, as in a shell after `kubectl get secret`.
        os.environ["DASKRS_TLS_DIR"] = str(certs / "client")
        try:
            with daskrs.Client(address, token=token, set_as_default=False) as client:
                assert len(client.scheduler_info()["workers"]) == 1
        finally:
            del os.environ["DASKRS_TLS_DIR"]
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.kill()
                p.wait()
