"""``client.sql``: the cluster's SQL answers as Arrow tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import daskrs


@pytest.fixture(scope="module")
def sales(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Three Parquet files of one table, and the table as pandas."""
    root = tmp_path_factory.mktemp("sales")
    frames = []
    for i in range(3):
        df = pd.DataFrame(
            {
                "region": [["north", "south", "east"][(i + j) % 3] for j in range(1000)],
                "amount": [float(i * 1000 + j) for j in range(1000)],
                "units": [j % 7 for j in range(1000)],
            }
        )
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / f"part-{i}.parquet")
        frames.append(df)
    return root, pd.concat(frames, ignore_index=True)


def test_sql_answers_as_an_arrow_table_equal_to_pandas(
    client: daskrs.Client, sales: tuple[Path, pd.DataFrame]
) -> None:
    root, df = sales
    table = client.sql(
        f"SELECT region, SUM(amount) AS amount, COUNT(*) AS n FROM '{root}/*.parquet' "
        "GROUP BY region ORDER BY region"
    )
    assert isinstance(table, pa.Table)
    got = table.to_pandas()
    want = (
        df.groupby("region")
        .agg(amount=("amount", "sum"), n=("amount", "size"))
        .reset_index()
        .sort_values("region", ignore_index=True)
    )
    assert got["region"].tolist() == want["region"].tolist()
    assert got["amount"].tolist() == want["amount"].tolist()
    assert got["n"].tolist() == want["n"].tolist()


def test_catalog_statements_and_then_queries_on_the_new_table(
    client: daskrs.Client, sales: tuple[Path, pd.DataFrame]
) -> None:
    root, df = sales
    client.sql(f"CREATE EXTERNAL TABLE IF NOT EXISTS sales STORED AS PARQUET LOCATION '{root}/'")
    n = client.sql("SELECT COUNT(*) AS n FROM sales WHERE units = 3").column("n")[0].as_py()
    assert n == int((df["units"] == 3).sum())


def test_bad_sql_is_rejected_naming_what_is_wrong(client: daskrs.Client) -> None:
    with pytest.raises(daskrs.Rejected, match="no_such_column"):
        client.sql("SELECT no_such_column FROM (SELECT 1 AS one)")


def test_a_missing_file_is_an_error_naming_it(client: daskrs.Client, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.parquet"
    with pytest.raises(daskrs.DaskrsError, match="nothing-here"):
        client.sql(f"SELECT * FROM '{missing}'")


def test_an_answer_kept_on_the_cluster_is_a_python_tasks_arrow_input(
    client: daskrs.Client, sales: tuple[Path, pd.DataFrame]
) -> None:
    root, df = sales
    query = f"SELECT region, SUM(units) AS units FROM '{root}/*.parquet' GROUP BY region ORDER BY region"
    answer = client.sql(query, compute=False)
    assert isinstance(answer, daskrs.Future)

    def describe(t: pa.Table) -> tuple[str, list[str], list[int]]:
        return type(t).__name__, t.column("region").to_pylist(), t.column("units").to_pylist()

    kind, regions, units = client.submit(describe, answer).result(timeout=60)
    want = df.groupby("region")["units"].sum().sort_index()
    assert kind == "Table"
    assert regions == want.index.tolist()
    assert units == want.tolist()
    assert answer.result(timeout=60).equals(client.sql(query))


def test_a_python_tasks_arrow_table_is_a_table_of_sql(client: daskrs.Client) -> None:
    def make(n: int) -> pa.Table:
        return pa.table({"k": [i % 4 for i in range(n)], "v": [float(i) for i in range(n)]})

    t = client.submit(make, 10_000)
    got = client.sql("SELECT k, SUM(v) AS v, COUNT(*) AS n FROM t GROUP BY k ORDER BY k", tables={"t": t})
    want = make(10_000).to_pandas().groupby("k")["v"].agg(["sum", "size"])
    assert got.column("k").to_pylist() == want.index.tolist()
    assert got.column("v").to_pylist() == want["sum"].tolist()
    assert got.column("n").to_pylist() == want["size"].tolist()
    # The table was this query's own.
    with pytest.raises(daskrs.Rejected, match="not found"):
        client.sql("SELECT * FROM t")


def test_a_compiled_classmethod_is_a_task(client: daskrs.Client) -> None:
    # cloudpickle cannot name `pa.Table.from_pandas`; the standard pickler can.
    frame = pd.DataFrame({"k": [1, 2, 3], "v": [0.5, 1.5, 2.5]})
    t = client.submit(pa.Table.from_pandas, frame, preserve_index=False)
    got = client.sql("SELECT SUM(v) AS v FROM t WHERE k > 1", tables={"t": t})
    assert got.column("v").to_pylist() == [4.0]


def test_local_frames_and_futures_of_frames_join_files_and_answers(
    client: daskrs.Client, sales: tuple[Path, pd.DataFrame]
) -> None:
    root, df = sales
    names = pd.DataFrame({"region": ["north", "south", "east"], "manager": ["Ana", "Bo", "Cy"]})
    weights = client.submit(lambda: pd.DataFrame({"units": list(range(7)), "weight": [1.5**u for u in range(7)]}))
    per_region = client.sql(
        f"SELECT region, units, COUNT(*) AS n FROM '{root}/*.parquet' GROUP BY region, units",
        compute=False,
    )
    got = client.sql(
        "SELECT m.manager, SUM(p.n * w.weight) AS score FROM p "
        "JOIN managers m ON p.region = m.region JOIN w ON p.units = w.units "
        "GROUP BY m.manager ORDER BY m.manager",
        tables={"p": per_region, "managers": names, "w": weights},
    ).to_pandas()
    w = pd.DataFrame({"units": list(range(7)), "weight": [1.5**u for u in range(7)]})
    want = (
        df.merge(names, on="region")
        .merge(w, on="units")
        .groupby("manager")["weight"]
        .sum()
        .sort_index()
    )
    assert got["manager"].tolist() == want.index.tolist()
    assert got["score"].tolist() == pytest.approx(want.tolist())


def test_tables_that_are_not_tables_are_refused_naming_them(client: daskrs.Client) -> None:
    with pytest.raises(TypeError, match="'nums'.*int"):
        client.sql("SELECT * FROM nums", tables={"nums": client.submit(abs, -3)})
    with pytest.raises(TypeError, match="'rows'.*list"):
        client.sql("SELECT * FROM rows", tables={"rows": [1, 2, 3]})
    with pytest.raises(daskrs.Rejected, match="nope"):
        client.sql("SELECT * FROM nope", tables={"t": pa.table({"a": [1]})})


def test_table_names_are_found_quoted_or_not(client: daskrs.Client) -> None:
    sales = pa.table({"v": [1, 2, 3]})
    assert client.sql("SELECT SUM(v) AS s FROM Sales", tables={"Sales": sales}).column("s").to_pylist() == [6]
    assert client.sql('SELECT SUM(v) AS s FROM "Sales"', tables={"Sales": sales}).column("s").to_pylist() == [6]
