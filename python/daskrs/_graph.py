"""Dask graphs as daskrs graphs: every node of a dask graph becomes one
``python`` task whose payload is the pickled node and the dask keys of its
dependencies, in the order the worker hands their results over."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from daskrs import _serialize

PYTHON = "python"


def key_name(key: Any) -> str:
    """The daskrs key of a dask key: strings as they are, tuples such as
    ``('sum-abc', 0, 1)`` as their repr."""
    if isinstance(key, str):
        return key
    return repr(key)


def flatten_keys(keys: Any) -> list[Any]:
    """The dask keys of a (nested list of) keys, in order."""
    out: list[Any] = []

    def walk(k: Any) -> None:
        if isinstance(k, list):
            for x in k:
                walk(x)
        else:
            out.append(k)

    walk(keys)
    return out


def pack(keys: Any, values: Mapping[Any, Any]) -> Any:
    """The nested structure of ``keys`` with each key replaced by its value."""
    if isinstance(keys, list):
        return [pack(k, values) for k in keys]
    return values[keys]


def to_tasks(
    dsk: Any, retries: int = 0, priority: int | None = None, keep: Iterable[Any] = ()
) -> list[tuple[str, str, bytes, list[str], int, int]]:
    """The daskrs tasks of a dask graph (legacy tuples or task-spec nodes):
    ``(key, kind, payload, deps, priority, retries)``. A dependency that is
    not in the graph must be a key the client's session holds (a future).
    Tasks of equal ``priority`` (0 unless given) run in the scheduler's
    depth-first order of the graph, which finishes one branch before it
    starts the next as Dask's ordering does, at a fraction of its cost on
    the client. Linear chains of tasks whose keys are not in ``keep`` run
    as one task (see ``fuse_chains``)."""
    from dask._task_spec import convert_legacy_graph

    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()  # an expression, as dask.compute hands over
    graph = fuse_chains(convert_legacy_graph(dict(dsk)), set(keep))
    rank = priority or 0
    tasks = []
    for key, node in graph.items():
        deps = sorted(node.dependencies, key=key_name)
        try:
            payload = _serialize.dumps_bytes((node, deps))[1]
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises
            raise TypeError(
                f"task {key_name(key)!r} cannot be sent to the cluster: "
                f"it does not pickle ({type(exc).__name__}: {exc})"
            ) from exc
        tasks.append(
            (
                key_name(key),
                PYTHON,
                payload,
                [key_name(d) for d in deps],
                rank,
                retries,
            )
        )
    return tasks


def fuse_chains(graph: dict[Any, Any], keep: set[Any]) -> dict[Any, Any]:
    """The graph with each linear chain (a task whose only input is a task
    that nothing else takes and nobody wants) made one task, under the key
    of its last. A worker runs Python tasks in a separate process, so each
    task boundary costs its result a round trip as bytes: reading a Parquet
    file, converting its columns and aggregating them is one pass over the
    data in memory rather than three trips of the whole frame."""
    dependents: dict[Any, int] = {}
    for node in graph.values():
        for d in node.dependencies:
            if d in graph:
                dependents[d] = dependents.get(d, 0) + 1

    def only_input(key: Any) -> Any:
        """The input `key`'s task absorbs, if it absorbs one."""
        deps = graph[key].dependencies
        if len(deps) != 1:
            return None
        (d,) = deps
        if d not in graph or d in keep or dependents.get(d) != 1 or graph[d].block_fusion:
            return None
        return d

    absorbs = {k: d for k in graph if (d := only_input(k)) is not None}
    absorbed = set(absorbs.values())
    fused = {}
    for key, node in graph.items():
        if key in absorbed:
            continue
        chain = [node]
        d = absorbs.get(key)
        while d is not None:
            chain.append(graph[d])
            d = absorbs.get(d)
        fused[key] = node if len(chain) == 1 else Chain(key, chain[::-1])
    return fused


class Chain:
    """The tasks of a linear chain as one task: each takes the result of the
    one before it, the first takes the chain's inputs. (Dask's own fused
    task works out its subgraph's order on every run, which costs more than
    a small task itself.)"""

    __slots__ = ("dependencies", "key", "nodes")

    def __init__(self, key: Any, nodes: list[Any]) -> None:
        self.key = key
        self.nodes = tuple(nodes)
        self.dependencies = nodes[0].dependencies

    def __call__(self, values: Mapping[Any, Any]) -> Any:
        first, *rest = self.nodes
        value = first(values)
        before = first.key
        for node in rest:
            value = node({before: value})
            before = node.key
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return (Chain, (self.key, list(self.nodes)))
