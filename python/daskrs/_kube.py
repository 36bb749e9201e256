"""A daskrs cluster on Kubernetes, from Python: ``KubeCluster`` creates a
``DaskCluster`` resource that the daskrs operator turns into a scheduler and
worker pods, waits until it runs, forwards the scheduler's ports to this
machine through the API server and reads the cluster's token and client
certificate, so that ``Client(cluster)`` connects from a laptop as from a
pod.

It talks to Kubernetes with kr8s (PyPI: ``kr8s``), the client dask-kubernetes
uses: asyncio-native, small, and it reads kubeconfig files, in-cluster
service accounts and exec credential plugins (``aws eks get-token``) the way
kubectl does. Every call runs on one event loop in a thread of this object,
which also serves the port forwards.
"""

from __future__ import annotations

import asyncio
import atexit
import html
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daskrs.errors import DaskrsError

GROUP = "daskrs.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "daskclusters"
SCHEDULER_PORT = 8786
HTTP_PORT = 8787
# The subprotocol of the kubelet's WebSocket port forward: every message
# starts with its channel's byte, data on 0 and errors on 1 for one port.
PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"
# A Service named `<name>-scheduler` must be a DNS label (63 characters).
MAX_NAME = 63 - len("-scheduler")
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Container waiting reasons that no amount of waiting fixes.
_FATAL_WAITING = {
    "ErrImagePull": "cannot pull its image",
    "ImagePullBackOff": "cannot pull its image",
    "InvalidImageName": "names an invalid image",
    "ErrImageNeverPull": "names an image absent from the node (imagePullPolicy: Never)",
    "CreateContainerConfigError": "cannot be configured",
    "CreateContainerError": "cannot be created",
}
_S3_KEYS = {
    "endpoint": "endpoint",
    "region": "region",
    "max_concurrency": "maxConcurrency",
    "credentials_secret": "credentialsSecret",
}


class KubeError(DaskrsError):
    """Kubernetes refused, or could not do, what the cluster needs: the
    message says what was asked, of which object, and why. ``code`` is the
    API server's HTTP status when it answered, and ``detail`` its message."""

    def __init__(self, message: str, *, code: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail or message


def _is_whole(v: Any) -> bool:
    """A whole number >= 0 (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _random_name() -> str:
    return f"daskrs-{uuid.uuid4().hex[:8]}"


def make_cluster_spec(
    name: str,
    *,
    n_workers: int = 2,
    image: str | None = None,
    resources: Mapping[str, Any] | None = None,
    scheduler_resources: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | list[dict[str, Any]] | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | str | None = None,
    s3: Mapping[str, Any] | None = None,
    tls: bool = True,
    idle_timeout: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``DaskCluster`` manifest ``KubeCluster`` creates from its
    arguments. Raises ``ValueError`` naming the argument at fault."""
    check_name(name)
    if not _is_whole(n_workers):
        raise ValueError(f"n_workers must be a whole number >= 0, not {n_workers!r}")
    worker: dict[str, Any] = {"replicas": n_workers}
    scheduler: dict[str, Any] = {}
    if threads_per_worker is not None:
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(
                f"threads_per_worker must be a whole number >= 1, not {threads_per_worker!r}"
            )
        worker["threads"] = threads_per_worker
    if memory_limit is not None:
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, str)):
            raise ValueError(
                f"memory_limit must be bytes (int) or a quantity such as '4Gi', not {memory_limit!r}"
            )
        worker["memoryLimit"] = memory_limit
    if resources is not None:
        worker["resources"] = _resources("resources", resources)
    if scheduler_resources is not None:
        scheduler["resources"] = _resources("scheduler_resources", scheduler_resources)
    if env is not None:
        variables = _env(env)
        worker["env"] = variables
        scheduler["env"] = [dict(v) for v in variables]
    if labels is not None:
        worker["labels"] = dict(labels)
        scheduler["labels"] = dict(labels)
    spec: dict[str, Any] = {"worker": worker}
    if scheduler:
        spec["scheduler"] = scheduler
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"image must name an image, not {image!r}")
        spec["image"] = image
    if s3 is not None:
        spec["s3"] = _s3(s3)
    if not tls:
        spec["tls"] = {"enabled": False}
    if idle_timeout is not None:
        spec["idleTimeout"] = idle_timeout
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": spec,
    }


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME:
        raise ValueError(
            f"cluster name {name!r} must be at most {MAX_NAME} lowercase letters, digits "
            "and '-', starting with a letter and ending with a letter or digit"
        )


def _resources(argument: str, value: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(value) - {"requests", "limits"}
    if unknown:
        raise ValueError(
            f"{argument} takes 'requests' and 'limits', not {', '.join(sorted(map(str, unknown)))}"
        )
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        if part in value:
            quantities = value[part]
            if not isinstance(quantities, Mapping):
                raise ValueError(f"{argument}[{part!r}] must map resource names to quantities")
            out[part] = {str(k): str(v) for k, v in quantities.items()}
    return out


def _env(env: Mapping[str, str] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(env, Mapping):
        return [{"name": str(k), "value": str(v)} for k, v in env.items()]
    out = []
    for item in env:
        if not isinstance(item, Mapping) or "name" not in item:
            raise ValueError(
                f"env entries are {{'name': ..., 'value': ...}} mappings, not {item!r}"
            )
        out.append(dict(item))
    return out


def _s3(s3: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(s3) - set(_S3_KEYS)
    if unknown:
        raise ValueError(
            f"s3 takes {', '.join(sorted(_S3_KEYS))}, not {', '.join(sorted(map(str, unknown)))}"
        )
    out: dict[str, Any] = {}
    for key, field in _S3_KEYS.items():
        if key not in s3 or s3[key] is None:
            continue
        value = s3[key]
        if key == "credentials_secret":
            # A Secret's name, or the CRD's object with the key names.
            value = {"name": value} if isinstance(value, str) else _camel(value)
        elif key == "max_concurrency":
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"s3['max_concurrency'] must be >= 1, not {value!r}")
        out[field] = value
    return out


def _camel(mapping: Mapping[str, Any]) -> dict[str, Any]:
    def camel(key: str) -> str:
        head, *rest = key.split("_")
        return head + "".join(p.title() for p in rest)

    return {camel(str(k)): v for k, v in mapping.items()}


def load_spec(spec: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A ``DaskCluster`` manifest from a mapping, a YAML file or YAML text."""
    import yaml

    if isinstance(spec, Mapping):
        manifest = dict(spec)
    else:
        text = str(spec)
        path = Path(text)
        if "\n" not in text and path.exists():
            text = path.read_text()
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            raise ValueError(f"the cluster spec is not YAML: {e}") from None
        # A file may hold other objects beside the cluster (a
        # ServiceAccount, a Secret); the DaskCluster is the one wanted.
        clusters = [d for d in documents if isinstance(d, dict) and d.get("kind") == "DaskCluster"]
        if len(clusters) > 1:
            raise ValueError(f"the cluster spec holds {len(clusters)} DaskClusters; give one")
        manifest = clusters[0] if clusters else (documents[0] if len(documents) == 1 else None)
    if not isinstance(manifest, dict):
        raise ValueError("the cluster spec must be a DaskCluster manifest (a mapping)")
    kind = manifest.get("kind", "DaskCluster")
    if kind != "DaskCluster":
        raise ValueError(f"the cluster spec is a {kind}, not a DaskCluster")
    if manifest.get("apiVersion", API_VERSION) != API_VERSION:
        raise ValueError(
            f"the cluster spec's apiVersion is {manifest['apiVersion']}, not {API_VERSION}"
        )
    if not isinstance(manifest.get("spec"), dict) or "worker" not in manifest["spec"]:
        raise ValueError("the cluster spec needs spec.worker (at least {replicas: N})")
    manifest["apiVersion"] = API_VERSION
    manifest["kind"] = "DaskCluster"
    manifest["metadata"] = dict(manifest.get("metadata") or {})
    return manifest


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


class _Loop:
    """An event loop in a daemon thread: every Kubernetes call and every
    port forward of one ``KubeCluster``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="daskrs-kube", daemon=True
        )
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


class _Forward:
    """A listener on 127.0.0.1 whose connections each open a port forward
    to ``port`` of the cluster's ready scheduler pod, through the API
    server's ``pods/portforward`` WebSocket."""

    def __init__(self, cluster: KubeCluster, port: int) -> None:
        self.cluster = cluster
        self.port = port
        self.local_port = 0
        self.server: asyncio.base_events.Server | None = None
        self.last_error: str | None = None

    async def start(self) -> None:
        # Port 0: the kernel's choice, held from here on.
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.local_port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pod = await self.cluster._scheduler_pod()
            api = await self.cluster._api()
            async with api.open_websocket(
                version="v1",
                namespace=self.cluster.namespace,
                url=f"pods/{pod}/portforward",
                params={"ports": str(self.port)},
                subprotocols=[PORTFORWARD_PROTOCOL],
            ) as ws:
                await self._pump(ws, reader, writer)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one connection fails, not the listener
            self.last_error = f"port forward to the scheduler's port {self.port}: {e}"
        finally:
            writer.close()

    async def _pump(
        self, ws: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def up() -> None:
            while data := await reader.read(1 << 16):
                await ws.send_bytes(b"\x00" + data)

        async def down() -> None:
            seen: set[int] = set()
            while True:
                message = await ws.receive_bytes()
                if not message:
                    continue
                channel, body = message[0], message[1:]
                if channel not in seen:
                    # Each channel's first message names its port.
                    seen.add(channel)
                    continue
                if channel == 1:
                    if body:
                        self.last_error = body.decode(errors="replace")
                        return
                    continue
                writer.write(body)
                await writer.drain()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    error = t.exception()
                    if not _closed(error):
                        raise error  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _closed(error: BaseException | None) -> bool:
    """Whether the error is just the other side hanging up."""
    name = type(error).__name__
    return isinstance(error, (ConnectionError, EOFError)) or name in {
        "WebSocketDisconnect",
        "WebSocketNetworkError",
    }


# Clusters this process created and has not closed, deleted at exit.
_LIVE: weakref.WeakSet[KubeCluster] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for cluster in list(_LIVE):
        try:
            cluster.close(timeout=30)
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


class KubeCluster:
    """A daskrs cluster on Kubernetes, created by this object (or attached
    to with :meth:`from_name`) and deleted by :meth:`close`.

        >>> cluster = KubeCluster(name="demo", n_workers=3)
        >>> client = daskrs.Client(cluster)
        >>> cluster.scale(10)
        >>> cluster.close()

    Arguments build the ``DaskCluster`` (see :func:`make_cluster_spec`), or
    ``custom_cluster_spec`` gives one (a mapping, a YAML file or text);
    ``namespace`` defaults to the kubeconfig context's. From outside the
    cluster the scheduler's ports are forwarded to 127.0.0.1 through the API
    server (``port_forward=True``, the default there); inside it (a pod, e.g.
    a JupyterHub server) the client connects to the scheduler's Service,
    which the cluster's NetworkPolicy admits from pods labelled
    ``daskrs.dev/client=true``.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        namespace: str | None = None,
        n_workers: int = 2,
        image: str | None = None,
        resources: Mapping[str, Any] | None = None,
        scheduler_resources: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | list[dict[str, Any]] | None = None,
        threads_per_worker: int | None = None,
        memory_limit: int | str | None = None,
        s3: Mapping[str, Any] | None = None,
        tls: bool = True,
        idle_timeout: str | None = None,
        custom_cluster_spec: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        shutdown_on_close: bool | None = None,
        port_forward: bool | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        timeout: float = 600.0,
        operator_timeout: float = 30.0,
        quiet: bool = False,
        _attach: bool = False,
    ) -> None:
        self._loop: _Loop | None = None
        self._forwards: dict[int, _Forward] = {}
        self._tls_dir: str | None = None
        self._closed = False
        # The cluster was made, or found, by this object.
        self._exists = False
        self._spec: dict[str, Any] = {}
        self._kubeconfig = None if kubeconfig is None else os.fspath(kubeconfig)
        self._context = context
        self.quiet = quiet
        self.token: str | None = None
        self.status: dict[str, Any] = {}
        self.port_forward = (not _in_cluster()) if port_forward is None else port_forward
        if _attach:
            if name is None:
                raise ValueError("from_name needs the cluster's name")
            check_name(name)
            manifest = None
        elif custom_cluster_spec is not None:
            manifest = load_spec(custom_cluster_spec)
            name = name or manifest["metadata"].get("name") or _random_name()
            check_name(name)
            manifest["metadata"]["name"] = name
        else:
            name = name or _random_name()
            manifest = make_cluster_spec(
                name,
                n_workers=n_workers,
                image=image,
                resources=resources,
                scheduler_resources=scheduler_resources,
                env=env,
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                s3=s3,
                tls=tls,
                idle_timeout=idle_timeout,
            )
        self.name: str = name
        self.shutdown_on_close = (not _attach) if shutdown_on_close is None else shutdown_on_close
        self._loop = _Loop()
        try:
            api = self._loop.run(self._api(), timeout=60)
            self.namespace: str = (
                namespace
                or (manifest or {}).get("metadata", {}).get("namespace")
                or api.namespace
                or "default"
            )
            if manifest is not None:
                manifest["metadata"]["namespace"] = self.namespace
                self._loop.run(self._create(manifest), timeout=60)
                self._exists = True
                _LIVE.add(self)
            else:
                self._loop.run(self._get(missing_ok=False), timeout=60)
                self._exists = True
            self._loop.run(self._wait_running(timeout, operator_timeout), timeout=timeout + 60)
            self._loop.run(self._credentials(), timeout=60)
            if self.port_forward:
                for port in (SCHEDULER_PORT, HTTP_PORT):
                    forward = _Forward(self, port)
                    self._loop.run(forward.start(), timeout=10)
                    self._forwards[port] = forward
                self._check_forward()
        except BaseException as e:
            try:
                self.close()
            except Exception as cleanup:  # noqa: BLE001 - the first error is the one to see
                if hasattr(e, "add_note"):  # Python 3.11 and later
                    e.add_note(f"closing the KubeCluster then failed too: {cleanup}")
            raise

    @classmethod
    def from_name(cls, name: str, *, namespace: str | None = None, **kwargs: Any) -> KubeCluster:
        """Attaches to a running ``DaskCluster``; :meth:`close` then leaves it
        running unless ``shutdown_on_close=True``."""
        return cls(name, namespace=namespace, _attach=True, **kwargs)

    # ---------------------------------------------------------- addresses

    @property
    def scheduler_address(self) -> str:
        if self.port_forward:
            return f"127.0.0.1:{self._forwards[SCHEDULER_PORT].local_port}"
        return f"{self.name}-scheduler.{self.namespace}.svc:{SCHEDULER_PORT}"

    @property
    def dashboard_link(self) -> str:
        if self.port_forward:
            base = f"http://127.0.0.1:{self._forwards[HTTP_PORT].local_port}/"
        else:
            base = f"http://{self.name}-scheduler.{self.namespace}.svc:{HTTP_PORT}/"
        return base + (f"?token={self.token}" if self.token else "")

    @property
    def spec(self) -> dict[str, Any]:
        """The DaskCluster's spec as last read from the API server."""
        return self._spec

    @property
    def tls_dir(self) -> str | None:
        """A private directory with the cluster's client certificate
        (``ca.crt``, ``tls.crt``, ``tls.key``), when the cluster has TLS."""
        return self._tls_dir

    # ---------------------------------------------------------- operations

    def scale(self, n: int) -> None:
        """Asks for ``n`` workers, ending adaptive scaling. Scaling down
        retires workers after they hand their results to others."""
        if not _is_whole(n):
            raise ValueError(f"scale takes a whole number of workers >= 0, not {n!r}")
        patch = {"spec": {"worker": {"replicas": n}, "autoscaling": None}}
        self._run(self._patch(patch, f"scale to {n} workers"))

    def adapt(self, minimum: int = 0, maximum: int = 10) -> None:
        """Lets the operator choose between ``minimum`` and ``maximum``
        workers by the scheduler's load."""
        for arg, v in (("minimum", minimum), ("maximum", maximum)):
            if not _is_whole(v):
                raise ValueError(f"adapt: {arg} must be a whole number >= 0, not {v!r}")
        if minimum > maximum:
            raise ValueError(f"adapt: minimum ({minimum}) exceeds maximum ({maximum})")
        patch = {"spec": {"autoscaling": {"minReplicas": minimum, "maxReplicas": maximum}}}
        self._run(self._patch(patch, f"adapt between {minimum} and {maximum} workers"))

    def wait_for_workers(self, n: int, timeout: float = 300.0) -> None:
        """Blocks until the cluster runs with ``n`` ready workers."""
        self._run(self._wait_running(timeout, timeout, workers=n), timeout=timeout + 60)

    def get_logs(self, tail_lines: int | None = None) -> dict[str, str]:
        """The logs of the scheduler and worker pods, by pod name."""
        return self._run(self._logs(tail_lines))

    def refresh(self) -> dict[str, Any]:
        """The DaskCluster's status as the API server has it now."""
        self._run(self._get(missing_ok=False))
        return self.status

    def close(self, timeout: float = 120.0) -> None:
        """Stops the port forwards, and deletes the cluster (its pods,
        Services and Secrets go with it) when this object created it or
        ``shutdown_on_close`` says so; waits until it is gone."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        loop, self._loop = self._loop, None
        try:
            if loop is not None:
                for forward in self._forwards.values():
                    loop.run(forward.stop(), timeout=10)
                # Only what this object made, or was told to remove.
                if self.shutdown_on_close and self._exists:
                    loop.run(self._delete(timeout), timeout=timeout + 30)
        finally:
            if loop is not None:
                loop.stop()
            if self._tls_dir is not None:
                shutil.rmtree(self._tls_dir, ignore_errors=True)
                self._tls_dir = None

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"KubeCluster({self.name!r}, namespace={getattr(self, 'namespace', None)!r}, "
            f"workers={self.status.get('readyReplicas', 0)}/{self._desired()}, "
            f"phase={self.status.get('phase')!r})"
        )

    def _repr_html_(self) -> str:
        rows = [
            ("Name", self.name),
            ("Namespace", getattr(self, "namespace", "")),
            ("Phase", "closed" if self._closed else self.status.get("phase", "")),
            ("Workers", f"{self.status.get('readyReplicas', 0)} ready of {self._desired()}"),
        ]
        if not self._closed:
            rows.append(("Scheduler", self.scheduler_address))
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        link = ""
        if not self._closed:
            href = html.escape(self.dashboard_link)
            link = f"<tr><th style='text-align:left'>Dashboard</th><td><a href='{href}' target='_blank'>{href}</a></td></tr>"
        return f"<div><b>daskrs.KubeCluster</b><table>{body}{link}</table></div>"

    # ---------------------------------------------------------- internals

    def _run(self, coro: Any, timeout: float | None = 120.0) -> Any:
        if self._loop is None:
            coro.close()
            raise DaskrsError(f"the KubeCluster {self.name} is closed")
        return self._loop.run(coro, timeout=timeout)

    def _desired(self) -> int:
        return int(self.status.get("targetReplicas", self.status.get("replicas", 0)) or 0)

    def _where(self) -> str:
        return f"DaskCluster {getattr(self, 'namespace', '?')}/{self.name}"

    async def _api(self) -> Any:
        try:
            import kr8s.asyncio
        except ImportError as e:
            raise KubeError(
                f"KubeCluster needs the kr8s package ({e}): pip install 'daskrs[kube]'"
            ) from None
        try:
            return await kr8s.asyncio.api(kubeconfig=self._kubeconfig, context=self._context)
        except Exception as e:  # noqa: BLE001 - kr8s raises plain errors for config trouble
            raise KubeError(
                f"no usable Kubernetes configuration (kubeconfig or in-cluster): {e}"
            ) from e

    async def _call(
        self,
        what: str,
        method: str,
        url: str,
        *,
        version: str = API_VERSION,
        namespaced: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One API call, its answer as JSON; failures as ``KubeError``
        naming ``what`` was asked."""
        from kr8s._exceptions import APITimeoutError, ServerError

        api = await self._api()
        try:
            async with api.call_api(
                method,
                version=version,
                namespace=self.namespace if namespaced else None,
                url=url,
                **kwargs,
            ) as response:
                return response.json() if response.content else {}
        except ServerError as e:
            code = e.response.status_code if e.response is not None else 0
            raise KubeError(f"{what}: {e} (HTTP {code})", code=code, detail=str(e)) from None
        except APITimeoutError as e:
            raise KubeError(f"{what}: the Kubernetes API server did not answer ({e})") from None
        except OSError as e:
            raise KubeError(f"{what}: cannot reach the Kubernetes API server ({e})") from None

    async def _create(self, manifest: dict[str, Any]) -> None:
        what = f"create {self._where()}"
        try:
            created = await self._call(what, "POST", PLURAL, json=manifest)
        except KubeError as e:
            if e.code == 404:
                if not await self._crd_installed():
                    raise _no_crd(what) from None
                raise KubeError(
                    f"{what}: {e.detail} (does namespace {self.namespace} exist?)"
                ) from None
            if e.code == 409:
                raise KubeError(
                    f"{what}: a DaskCluster named {self.name} already exists in namespace "
                    f"{self.namespace}; attach to it with KubeCluster.from_name({self.name!r}) "
                    "or choose another name"
                ) from None
            if e.code == 403:
                raise KubeError(f"{what}: forbidden: {e.detail}") from None
            if e.code == 422:
                raise KubeError(f"{what}: the API server refused the spec: {e.detail}") from None
            raise
        self._spec = created.get("spec") or {}
        self.status = created.get("status") or {}

    async def _crd_installed(self) -> bool:
        try:
            found = await self._call("discover", "GET", "", namespaced=False)
        except KubeError:
            return False
        return any(r.get("name") == PLURAL for r in found.get("resources", []))

    async def _get(self, missing_ok: bool) -> dict[str, Any] | None:
        what = f"read {self._where()}"
        try:
            found = await self._call(what, "GET", f"{PLURAL}/{self.name}")
        except KubeError as e:
            if e.code == 404:
                if missing_ok:
                    return None
                if not await self._crd_installed():
                    raise _no_crd(what) from None
                raise KubeError(
                    f"{what}: there is no DaskCluster {self.name} in namespace {self.namespace}"
                ) from None
            raise
        self._spec = found.get("spec") or {}
        self.status = found.get("status") or {}
        return found

    async def _pods(self, terminating: bool = False) -> list[dict[str, Any]]:
        """The cluster's pods; those being deleted only when asked."""
        found = await self._call(
            f"list the pods of {self._where()}",
            "GET",
            "pods",
            version="v1",
            params={"labelSelector": f"daskrs.dev/cluster={self.name}"},
        )
        pods = found.get("items", [])
        return (
            pods if terminating else [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        )

    async def _scheduler_pod(self) -> str:
        pods = await self._pods()
        ready = [
            p["metadata"]["name"]
            for p in pods
            if p["metadata"].get("labels", {}).get("daskrs.dev/role") == "scheduler"
            and _pod_ready(p)
        ]
        if not ready:
            raise KubeError(f"{self._where()} has no ready scheduler pod")
        return ready[0]

    async def _wait_running(
        self, timeout: float, operator_timeout: float, workers: int | None = None
    ) -> None:
        """Until the cluster is Running with its workers ready (or
        ``workers`` ready); fails fast on what waiting cannot fix."""
        progress = _Progress(self.quiet)
        start = time.monotonic()
        while True:
            found = await self._get(missing_ok=True)
            if found is None:
                raise KubeError(f"{self._where()} was deleted while it was starting")
            status = self.status
            generation = found["metadata"].get("generation")
            acted = status.get("observedGeneration") == generation
            pods = await self._pods()
            problem = _pod_problem(pods)
            if problem is not None:
                raise KubeError(f"{self._where()}: {problem}")
            if status.get("phase") == "Failed" and acted:
                raise KubeError(f"{self._where()} failed: {_conditions(status)}")
            want = workers if workers is not None else int(status.get("targetReplicas") or 0)
            ready = int(status.get("readyReplicas") or 0)
            scheduler_ready = _condition(status, "SchedulerReady") == "True"
            if acted and scheduler_ready and ready >= want and status.get("phase") == "Running":
                progress.done(f"{self._where()}: running, {ready} workers ready")
                return
            elapsed = time.monotonic() - start
            if not status:
                state = "waiting for the operator"
                if elapsed > operator_timeout:
                    raise KubeError(
                        f"{self._where()}: no operator acted on it in {operator_timeout:.0f} s; "
                        f"is the daskrs operator running and watching namespace {self.namespace}? "
                        "(helm install daskrs charts/daskrs; the chart's watchNamespaces)"
                    )
            else:
                workers_state = (
                    f"{ready} workers ready, scaling down to {want}"
                    if ready > want
                    else f"{ready} of {want} workers ready"
                )
                state = (
                    f"scheduler {'ready' if scheduler_ready else 'starting'}, "
                    f"{workers_state}{_pending(pods)}"
                )
            if elapsed > timeout:
                raise KubeError(f"{self._where()} not running after {timeout:.0f} s: {state}")
            progress.show(f"{self._where()}: {state} ({elapsed:.0f} s)")
            await asyncio.sleep(0.5)

    async def _credentials(self) -> None:
        token = await self._secret(f"{self.name}-daskrs-token")
        if token is not None:
            self.token = token["token"].decode()
        tls = self._tls_enabled()
        if tls:
            certs = await self._secret(f"{self.name}-daskrs-client")
            if certs is None:
                raise KubeError(
                    f"{self._where()} has TLS on but no Secret {self.name}-daskrs-client"
                )
            self._tls_dir = tempfile.mkdtemp(prefix=f"daskrs-{self.name}-")
            for file in ("ca.crt", "tls.crt", "tls.key"):
                path = Path(self._tls_dir) / file
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(certs[file])

    def _tls_enabled(self) -> bool:
        return bool((self._spec.get("tls") or {}).get("enabled", True))

    async def _secret(self, name: str) -> dict[str, bytes] | None:
        import base64

        what = f"read Secret {self.namespace}/{name} of {self._where()}"
        deadline = time.monotonic() + 30
        while True:
            try:
                found = await self._call(what, "GET", f"secrets/{name}", version="v1")
                return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}
            except KubeError as e:
                if e.code == 403:
                    raise KubeError(
                        f"{what}: forbidden ({e.detail}); connecting needs `get` on this "
                        "Secret, or pass the token and certificates to Client yourself"
                    ) from None
                if e.code != 404 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)

    def _check_forward(self) -> None:
        """One request through the HTTP forward, so a forward that cannot
        work fails here, with its reason, rather than in the client."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self._forwards[HTTP_PORT].local_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                r.read()
        except urllib.error.HTTPError:
            return  # the scheduler answered
        except OSError as e:
            why = self._forwards[HTTP_PORT].last_error or str(e)
            raise KubeError(
                f"{self._where()}: the port forward through the API server failed: {why} "
                "(it needs `create` on pods/portforward in the namespace)"
            ) from None

    async def _patch(self, patch: dict[str, Any], what: str) -> None:
        found = await self._call(
            f"{what} ({self._where()})",
            "PATCH",
            f"{PLURAL}/{self.name}",
            content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        self.status = found.get("status") or {}

    async def _logs(self, tail_lines: int | None) -> dict[str, str]:
        pods = await self._pods()
        pods.sort(
            key=lambda p: (
                p["metadata"].get("labels", {}).get("daskrs.dev/role") != "scheduler",
                p["metadata"]["name"],
            )
        )
        out = {}
        api = await self._api()
        params = {} if tail_lines is None else {"tailLines": str(tail_lines)}
        for pod in pods:
            name = pod["metadata"]["name"]
            try:
                async with api.call_api(
                    "GET",
                    version="v1",
                    namespace=self.namespace,
                    url=f"pods/{name}/log",
                    params=params,
                ) as r:
                    out[name] = r.text
            except Exception as e:  # noqa: BLE001 - one pod's logs, not all
                out[name] = f"<no logs: {e}>"
        return out

    async def _delete(self, timeout: float) -> None:
        what = f"delete {self._where()}"
        try:
            await self._call(
                what, "DELETE", f"{PLURAL}/{self.name}", params={"propagationPolicy": "Background"}
            )
        except KubeError as e:
            if e.code == 404:
                return
            raise
        deadline = time.monotonic() + timeout
        while True:
            gone = await self._get(missing_ok=True) is None
            # Gone means gone: no pod left, terminating ones included.
            if gone and not await self._pods(terminating=True):
                return
            if time.monotonic() > deadline:
                raise KubeError(f"{what}: still there after {timeout:.0f} s")
            await asyncio.sleep(0.5)


def _no_crd(what: str) -> KubeError:
    return KubeError(
        f"{what}: this Kubernetes cluster has no DaskCluster resource "
        f"({PLURAL}.{GROUP}); install the daskrs operator first "
        "(helm install daskrs charts/daskrs)"
    )


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pod_problem(pods: list[dict[str, Any]]) -> str | None:
    """The first pod whose containers cannot start, and why."""
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for c in status.get("containerStatuses") or []:
            waiting = (c.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in _FATAL_WAITING:
                return (
                    f"pod {name} {_FATAL_WAITING[reason]} ({reason}, image {c.get('image')}): "
                    f"{waiting.get('message', '')}".rstrip(": ")
                )
            if reason == "CrashLoopBackOff" and int(c.get("restartCount") or 0) >= 3:
                last = (c.get("lastState") or {}).get("terminated") or {}
                return (
                    f"pod {name} keeps crashing (restarted {c.get('restartCount')} times, last exit "
                    f"code {last.get('exitCode')}); see cluster.get_logs()"
                )
    return None


def _pending(pods: list[dict[str, Any]]) -> str:
    """Why pods wait to be scheduled, when the scheduler says."""
    reasons: dict[str, int] = {}
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                why = f"{c.get('reason')}: {c.get('message')}"
                reasons[why] = reasons.get(why, 0) + 1
    return "".join(f"; {n} pods Pending ({why})" for why, n in reasons.items())


def _condition(status: dict[str, Any], type_: str) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return c.get("status")
    return None


def _conditions(status: dict[str, Any]) -> str:
    failing = [
        f"{c.get('type')}: {c.get('reason')}: {c.get('message')}"
        for c in status.get("conditions") or []
        if c.get("status") != "True"
    ]
    return "; ".join(failing) or "no condition says why"


class _Progress:
    """One line of progress: updated in place in a notebook, and on a
    terminal's stderr; written only when it changes."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last = ""
        self.handle: Any = None
        self.tty = sys.stderr.isatty()
        if not quiet:
            try:
                from IPython import get_ipython

                if get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None:
                    from IPython.display import display

                    self.handle = display({"text/plain": ""}, raw=True, display_id=True)
            except ImportError:
                pass

    def show(self, text: str) -> None:
        if self.quiet:
            return
        # Seconds change every poll; the rest of the line decides.
        key = re.sub(r"\(\d+ s\)$", "", text)
        if self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)
        elif self.tty:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
        elif key != self.last:
            print(text, file=sys.stderr)
        self.last = key

    def done(self, text: str) -> None:
        if self.quiet:
            return
        if self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)
        elif self.tty:
            sys.stderr.write("\r\x1b[K" + text + "\n")
        else:
            print(text, file=sys.stderr)
