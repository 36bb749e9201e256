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
