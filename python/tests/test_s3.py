"""``dask.dataframe.read_parquet`` from ``s3://`` on a real MinIO server,
run by the cluster's workers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import daskrs

REPO = Path(__file__).resolve().parents[2]
MINIO = Path(os.environ.get("MINIO_BIN", Path.home() / ".cache/daskrs/bin/minio"))
KEY, SECRET = "daskrs", "daskrs-secret"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A MinIO server of this module's own; the storage options to reach it."""
    if not MINIO.exists():
        pytest.skip(f"no MinIO at {MINIO}: scripts/install-minio.sh installs it")
    d = tmp_path_factory.mktemp("minio")
    env = {**os.environ, "DASKRS_S3_ACCESS_KEY": KEY, "DASKRS_S3_SECRET_KEY": SECRET}
    env.pop("PORT", None)
    endpoint = subprocess.run(
        [str(REPO / "scripts/minio-up.sh"), str(d)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    ).stdout.strip()
    try:
        yield {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    finally:
        subprocess.run([str(REPO / "scripts/minio-down.sh"), str(d)], check=False)


def test_read_parquet_from_s3_on_the_cluster_equals_pandas(
    client: daskrs.Client, s3: dict[str, object]
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**s3)  # type: ignore[arg-type]
    fs.mkdir("sales")
    frames = []
    for i in range(4):
        rng = np.random.default_rng(i)
        df = pd.DataFrame(
            {"store": rng.integers(0, 9, 2000), "amount": rng.random(2000), "part": i}
        )
        with fs.open(f"sales/2026/part-{i}.parquet", "wb") as f:
            df.to_parquet(f, index=False)
        frames.append(df)
    whole = pd.concat(frames, ignore_index=True)

    df = dd.read_parquet("s3://sales/2026/", storage_options=s3)
    by_store = df.groupby("store").amount.agg(["sum", "count"])
    got = by_store.compute(scheduler=client).sort_index()
    want = whole.groupby("store").amount.agg(["sum", "count"]).sort_index()
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    assert len(df.compute(scheduler=client)) == 8000
