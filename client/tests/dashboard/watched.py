"""What the dashboard's browser test (client/tests/dashboard.rs) watches: a
dask.array graph and a SQL query on a daskrs cluster, each held at a gate
until the test lets it go on by creating a file. Says on stdout where it is:
"graph running", "graph done", "sql running", "sql done"; then holds its
session open until the gate "end".

    python watched.py ADDRESS TOKEN GATE_DIR
"""

import os
import sys
import time

import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa

import daskrs


def wait_for(path: str, *_: object) -> str:
    """Holds a worker's thread until ``path`` exists."""
    while not os.path.exists(path):
        time.sleep(0.02)
    return os.path.basename(path)


def slow_square(block: np.ndarray, gate: str) -> np.ndarray:
    """Waits for the gate, then works a little."""
    wait_for(gate)
    time.sleep(0.05)
    return block**2


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    address, token, gates = sys.argv[1:4]
    with daskrs.Client(address, token=token) as client:
        x = da.random.RandomState(7).random_sample((1600, 1600), chunks=200)
        # First a graph that runs through, so that the task stream has bars.
        mean = x.mean().compute()
        assert 0.45 < mean < 0.55, mean
        # Then one whose squares wait for the test.
        # (`meta` given: dask would call the function to find it out.)
        meta = np.empty((0, 0), dtype=x.dtype)
        y = x.map_blocks(slow_square, os.path.join(gates, "graph"), meta=meta)
        total = (y + y.T).sum()
        future = client.compute(total)
        say("graph running")
        got = future.result()
        expected = ((x**2) + (x**2).T).sum().compute(scheduler="sync")
        assert np.isclose(got, expected), (got, expected)
        say("graph done")

        # A query held behind tasks that take every thread of the cluster.
        workers = len(client.scheduler_info()["workers"])
        held = [
            client.submit(wait_for, os.path.join(gates, "sql"), i, pure=False)
            for i in range(workers)
        ]
        deadline = time.monotonic() + 60
        while not all(w["processing"] >= 1 for w in client.scheduler_info()["workers"]):
            assert time.monotonic() < deadline, client.scheduler_info()
            time.sleep(0.05)
        rng = np.random.default_rng(3)
        frame = pd.DataFrame({"g": rng.integers(0, 5, 20_000), "v": rng.random(20_000)})
        answer = client.sql(
            "select g, count(*) as n, sum(v) as total from t group by g order by g",
            tables={"t": pa.Table.from_pandas(frame)},
            compute=False,
        )
        say("sql running")
        client.gather(held)
        table = answer.result().to_pandas()
        expected = frame.groupby("g").agg(n=("v", "size"), total=("v", "sum")).reset_index()
        assert table["g"].tolist() == expected["g"].tolist(), table
        assert table["n"].tolist() == expected["n"].tolist(), table
        assert np.allclose(table["total"], expected["total"]), table
        say("sql done")
        # The session, with what the dashboard shows of it, stays until the
        # test has looked.
        wait_for(os.path.join(gates, "end"))


if __name__ == "__main__":
    main()
