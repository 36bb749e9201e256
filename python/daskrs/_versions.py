"""The versions a client and the executors of a cluster compare."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "daskrs": _version("daskrs"),
        "cloudpickle": _version("cloudpickle"),
        "dask": _version("dask"),
        "platform": sys.platform,
    }


# What must match between a client and the executors that run its tasks:
# pickled code and objects do not cross other versions reliably.
_COMPARED = (("python", "Python"), ("daskrs", "daskrs"), ("cloudpickle", "cloudpickle"), ("dask", "dask"))


def _comparable(name: str, version: str | None) -> str | None:
    if name == "python" and version:
        return ".".join(version.split(".")[:2])  # bytecode changes between minor releases
    return version


def mismatches(here: dict[str, str | None], there: dict[str, str | None]) -> list[str]:
    """What differs between two sides' versions, as "dask 2026.8.0 here,
    2025.4.0 there"."""
    out = []
    for name, label in _COMPARED:
        a, b = here.get(name), there.get(name)
        if _comparable(name, a) != _comparable(name, b):
            out.append(f"{label} {a or 'missing'} here, {b or 'missing'} there")
    return out
