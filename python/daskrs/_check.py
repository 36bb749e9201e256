"""The dask releases daskrs works with: 2025.4.0 and later."""

from __future__ import annotations

from importlib import metadata
from itertools import takewhile

from daskrs.errors import UnsupportedDask

OLDEST_DASK = (2025, 4, 0)


def _release(version: str) -> tuple[int, ...]:
    """(2025, 4, 0) of "2025.4.0", "2025.4.0rc1" or "2025.4"."""
    parts = [int("".join(takewhile(str.isdigit, p)) or 0) for p in version.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def check_dask(version: str | None = None) -> None:
    """Refuses a dask older than daskrs supports, saying which is needed."""
    if version is None:
        try:
            version = metadata.version("dask")
        except metadata.PackageNotFoundError:
            return  # dask is optional: SQL needs none
    if _release(version) < OLDEST_DASK:
        raise UnsupportedDask(
            f"daskrs needs dask 2025.4.0 or later, but dask {version} is installed: "
            "pip install 'dask>=2025.4.0'"
        )
