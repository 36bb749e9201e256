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
