"""TPC-H Q1 and Q3 with dask.dataframe on a 2-worker LocalCluster, reading the
same Parquet files as the daskrs benchmark. Prints {"q1": seconds, "q3": seconds}.

Answers are checked against each other only loosely here (row counts); the
daskrs side checks its answers against single-node DataFusion.
"""
import argparse
import datetime
import json
import sys
import time

import dask
import dask.dataframe as dd
from dask.distributed import Client, LocalCluster

DECIMALS = {
    "lineitem": ["l_quantity", "l_extendedprice", "l_discount", "l_tax"],
    "orders": ["o_totalprice"],
    "customer": ["c_acctbal"],
}


def table(data, name, columns):
    df = dd.read_parquet(f"{data}/{name}/", columns=columns)
    # Parquet decimals arrive as Python objects or Arrow decimals; floats are
    # what a pandas user computes with.
    cast = {c: "float64" for c in DECIMALS.get(name, []) if c in columns}
    return df.astype(cast) if cast else df


def q1(data):
    li = table(data, "lineitem", ["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice",
                                  "l_discount", "l_tax", "l_shipdate"])
    li = li[li.l_shipdate <= datetime.date(1998, 9, 2)]
    li = li.assign(disc_price=li.l_extendedprice * (1 - li.l_discount))
    li = li.assign(charge=li.disc_price * (1 + li.l_tax))
    out = li.groupby(["l_returnflag", "l_linestatus"]).agg(
        sum_qty=("l_quantity", "sum"),
        sum_base_price=("l_extendedprice", "sum"),
        sum_disc_price=("disc_price", "sum"),
        sum_charge=("charge", "sum"),
        avg_qty=("l_quantity", "mean"),
        avg_price=("l_extendedprice", "mean"),
        avg_disc=("l_discount", "mean"),
        count_order=("l_quantity", "size"),
    )
    return out.compute().sort_index()


def q3(data):
    c = table(data, "customer", ["c_custkey", "c_mktsegment"])
    o = table(data, "orders", ["o_orderkey", "o_custkey", "o_orderdate", "o_shippriority"])
    li = table(data, "lineitem", ["l_orderkey", "l_extendedprice", "l_discount", "l_shipdate"])
    day = datetime.date(1995, 3, 15)
    c = c[c.c_mktsegment == "BUILDING"]
    o = o[o.o_orderdate < day]
    li = li[li.l_shipdate > day]
    j = c.merge(o, left_on="c_custkey", right_on="o_custkey")
    j = j.merge(li, left_on="o_orderkey", right_on="l_orderkey")
    j = j.assign(revenue=j.l_extendedprice * (1 - j.l_discount))
    out = j.groupby(["l_orderkey", "o_orderdate", "o_shippriority"]).revenue.sum().reset_index()
    return out.compute().sort_values(["revenue", "o_orderdate"], ascending=[False, True]).head(10)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        result = {}
        for name, fn in [("q1", q1), ("q3", q3)]:
            best = float("inf")
            for _ in range(a.repeat):
                t = time.perf_counter()
                out = fn(a.data)
                best = min(best, time.perf_counter() - t)
            print(f"dask {name}: {len(out)} rows in {best:.3f}s", file=sys.stderr)
            result[name] = best
        print(json.dumps(result))


if __name__ == "__main__":
    main()
