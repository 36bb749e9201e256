"""Dask graphs as daskrs graphs: every node of a dask graph becomes one
``python`` task, or runs inside the one task that takes its result (see
``fuse``); a task's payload is the pickled node and the dask keys of its
dependencies, in the order the worker hands their results over."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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


# The most tasks one task of the cluster runs when it takes in the work of
# several inputs (see `fuse`), and the fewest of those tasks a graph keeps
# per thread of the cluster, so that fusing never leaves a thread idle.
MAX_GROUP = 64
GROUPS_PER_THREAD = 16


def group_limit(n_tasks: int, threads: int) -> int:
    """How many tasks of a graph of ``n_tasks`` one fused task may hold
    when the cluster has ``threads`` threads for Python tasks (1 while it
    has none: the cluster it will have is not known)."""
    if threads <= 0:
        return 1
    return max(1, min(MAX_GROUP, n_tasks // (GROUPS_PER_THREAD * threads)))


def to_tasks(
    dsk: Any,
    retries: int = 0,
    priority: int | None = None,
    keep: Iterable[Any] = (),
    threads: Callable[[], int] | None = None,
) -> list[tuple[str, str, bytes, list[str], int, int]]:
    """The daskrs tasks of a dask graph (legacy tuples or task-spec nodes):
    ``(key, kind, payload, deps, priority, retries)``. A dependency that is
    not in the graph must be a key the client's session holds (a future).
    Tasks of equal ``priority`` (0 unless given) run in the scheduler's
    depth-first order of the graph, which finishes one branch before it
    starts the next as Dask's ordering does, at a fraction of its cost on
    the client. Tasks whose results only one other task takes, and whose
    keys are not in ``keep``, run inside that task (see ``fuse``): ``threads``
    tells how many threads the cluster has, which bounds how many run as
    one where that costs parallelism (without it, only chains do)."""
    from dask._task_spec import convert_legacy_graph

    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()  # an expression, as dask.compute hands over
    graph = convert_legacy_graph(dict(dsk))
    limit = 1
    # Asking the cluster costs a round trip: not for a graph too small to
    # fuse even on one thread.
    if threads is not None and group_limit(len(graph), 1) > 1:
        limit = group_limit(len(graph), threads())
    graph = fuse(graph, set(keep), limit)
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


def inputs_first(graph: Mapping[Any, Any]) -> list[Any]:
    """The keys of ``graph``, each after the keys it depends on."""
    order: list[Any] = []
    seen: set[Any] = set()
    for root in graph:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(graph[root].dependencies))]
        while stack:
            key, deps = stack[-1]
            for d in deps:
                if d in graph and d not in seen:
                    seen.add(d)
                    stack.append((d, iter(graph[d].dependencies)))
                    break
            else:
                stack.pop()
                order.append(key)
    return order


def fuse(graph: dict[Any, Any], keep: set[Any], limit: int = 1) -> dict[Any, Any]:
    """The graph with tasks run inside the one task that takes their result,
    where nothing else takes it and nobody wants it: a worker runs Python
    tasks in a separate process, so each task boundary costs its result a
    round trip as bytes and the scheduler a task to track. Reading a
    Parquet file, converting its columns and aggregating them becomes one
    pass over the data in memory; the chunk sums of a reduction run inside
    the partial sum that takes them.

    A task with one input always takes it in (a chain runs in sequence
    anyway). A task with several takes in, smallest first, as many as keep
    it at ``limit`` tasks at most, since inputs that run inside one task
    run one after the other instead of side by side.

    A block that costs nothing to make (see ``recomputed``) and that
    several tasks take is made again inside each of them instead of being
    a task whose result travels to each."""
    taken: dict[Any, int] = {}
    for node in graph.values():
        for d in node.dependencies:
            if d in graph:
                taken[d] = taken.get(d, 0) + 1
    copied = {
        key
        for key, node in graph.items()
        if taken.get(key, 0) > 1 and key not in keep and not node.dependencies and recomputed(node)
    }

    def absorbable(d: Any) -> bool:
        return d in graph and d not in keep and taken[d] == 1 and not graph[d].block_fusion

    order = [key for key in inputs_first(graph) if key not in copied]
    size: dict[Any, int] = {}
    inner: dict[Any, list[Any]] = {}
    for key in order:
        deps = [d for d in graph[key].dependencies if d not in copied]
        inputs = [d for d in deps if absorbable(d)]
        if len(deps) == 1:
            chosen = inputs
        else:
            chosen, total = [], 1
            for d in sorted(inputs, key=size.__getitem__):
                if total + size[d] > limit:
                    break
                chosen.append(d)
                total += size[d]
        size[key] = 1 + sum(size[d] for d in chosen)
        if chosen:
            inner[key] = chosen
    # Each task runs in the task of its taker's group, the last of which
    # in `order` is the group's own; members keep `order`, inputs first,
    # each copied block just before the first member that takes it.
    taker = {d: key for key, ds in inner.items() for d in ds}
    group: dict[Any, Any] = {}
    for key in reversed(order):
        group[key] = group[taker[key]] if key in taker else key
    members: dict[Any, list[Any]] = {}
    made: dict[Any, set[Any]] = {}  # the copied blocks each group holds
    for key in order:
        nodes = members.setdefault(group[key], [])
        copies = made.setdefault(group[key], set())
        for d in graph[key].dependencies:
            if d in copied and d not in copies:
                copies.add(d)
                nodes.append(graph[d])
        nodes.append(graph[key])
    return {key: nodes[0] if len(nodes) == 1 else Fused(key, nodes) for key, nodes in members.items()}


def recomputed(node: Any) -> bool:
    """Whether a task is one of dask.array's constant blocks (``ones``,
    ``zeros``, ``full``, ``empty`` and their ``_like`` forms): a scalar
    broadcast to the block's shape, which costs less to make again than
    its bytes cost to send (a block sent is the whole block; made, it is
    one value). Dask runs such blocks as tasks of their own; here they are
    made again inside each task that takes them."""
    func = getattr(node, "func", None)
    for _ in range(4):  # partial(curry(_broadcast_trick_inner, np.ones_like), dtype=...)
        inner = getattr(func, "func", None)
        if inner is None:
            break
        func = inner
    return (
        getattr(func, "__module__", None) == "dask.array.wrap"
        and getattr(func, "__qualname__", None) == "_broadcast_trick_inner"
    )


class Fused:
    """Tasks run as one: each after its inputs, the last one's value the
    result. A value is let go of once the last task inside that takes it
    has run. (Dask's own fused task works out its subgraph's order on every
    run, which costs more than a small task itself.)"""

    __slots__ = ("dependencies", "drops", "inside", "key", "nodes")

    def __init__(self, key: Any, nodes: list[Any]) -> None:
        self.key = key
        self.nodes = tuple(nodes)
        self.inside = frozenset(n.key for n in nodes)
        self.dependencies = frozenset(d for n in nodes for d in n.dependencies if d not in self.inside)
        # After each node, the values inside that no later node takes.
        last: dict[Any, int] = {}
        for i, n in enumerate(self.nodes):
            for d in n.dependencies:
                if d in self.inside:
                    last[d] = i
        drops: list[list[Any]] = [[] for _ in self.nodes]
        for d, i in last.items():
            drops[i].append(d)
        self.drops = tuple(tuple(d) for d in drops)

    def __call__(self, values: Mapping[Any, Any]) -> Any:
        cache = dict(values)
        for node, drops in zip(self.nodes, self.drops):
            try:
                cache[node.key] = node(cache)
            except BaseException as exc:
                if node.key != self.key and hasattr(exc, "add_note"):
                    exc.add_note(f"in task {key_name(node.key)!r}, run inside task {key_name(self.key)!r}")
                raise
            for d in drops:
                del cache[d]
        return cache[self.key]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Fused, (self.key, list(self.nodes)))
