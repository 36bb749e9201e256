"""DuckDB's time for each TPC-DS query over the Parquet files of
scripts/tpcds-data.sh, as JSON {"q1": seconds, ...} (best of --repeat):
the third side of bench/tpcds.sh. Runs in the venv that script makes."""

from __future__ import annotations

import argparse
import json
import os
import time

import duckdb

COMPLETE = ".complete"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--queries", default="")
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.data, COMPLETE)):
        raise SystemExit(f"no TPC-DS data in {args.data}: run scripts/tpcds-data.sh")
    con = duckdb.connect()
    for table in sorted(os.listdir(args.data)):
        path = os.path.join(args.data, table)
        if table != "queries" and os.path.isdir(path):
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}/*.parquet')")
    wanted = [int(q) for q in args.queries.split(",") if q] or list(range(1, 100))
    out = {}
    for q in wanted:
        with open(os.path.join(args.data, "queries", f"{q}.sql")) as f:
            sql = f.read()
        best = None
        for _ in range(max(1, args.repeat)):
            t = time.perf_counter()
            con.execute(sql).fetchall()
            took = time.perf_counter() - t
            best = took if best is None else min(best, took)
        out[f"q{q}"] = best
    print(json.dumps(out))


if __name__ == "__main__":
    main()
