#!/usr/bin/env bash
# TPC-DS data and its 99 queries, made by DuckDB's tpcds extension (the
# PyPI packages duckdb and duckdb-extension-tpcds, in a venv of their own)
# into ~/.cache/daskrs/tpcds/sf<SF>: <table>/part-0.parquet for each table
# and queries/<n>.sql. Made once; prints the directory.
#
#   scripts/tpcds-data.sh [SF]     # scale factor, 0.01 unless given
set -euo pipefail
SF=${1:-0.01}
CACHE=${DASKRS_CACHE:-$HOME/.cache/daskrs}
DUCKDB_VERSION=1.5.5   # the extension package is released with the same version
OUT=$CACHE/tpcds/sf$SF
VENV=$CACHE/duckdb-venv

log() { echo "tpcds-data: $*" >&2; }
if [[ -f $OUT/.complete ]]; then echo "$OUT"; exit 0; fi
mkdir -p "$CACHE/tpcds"
exec 9>"$CACHE/tpcds/.lock"; flock 9   # concurrent callers wait for one build
if [[ -f $OUT/.complete ]]; then echo "$OUT"; exit 0; fi

if [[ "$(cat "$VENV/.version" 2>/dev/null)" != "$DUCKDB_VERSION" ]]; then
  log "installing duckdb $DUCKDB_VERSION and its tpcds extension into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "duckdb==$DUCKDB_VERSION" "duckdb-extension-tpcds==$DUCKDB_VERSION"
  echo "$DUCKDB_VERSION" >"$VENV/.version"
fi

log "generating TPC-DS at scale factor $SF into $OUT"
rm -rf "$OUT.tmp"
"$VENV/bin/python" - "$SF" "$OUT.tmp" <<'PY'
import glob, os, sys

import duckdb
import duckdb_extension_tpcds

sf, out = float(sys.argv[1]), sys.argv[2]
(extension,) = glob.glob(os.path.join(os.path.dirname(duckdb_extension_tpcds.__file__),
                                      "extensions", "*", "tpcds.duckdb_extension"))
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{extension}'")
con.execute(f"CALL dsdgen(sf={sf})")
for (table,) in con.execute("SHOW TABLES").fetchall():
    os.makedirs(os.path.join(out, table))
    con.execute(f"COPY {table} TO '{os.path.join(out, table, 'part-0.parquet')}' (FORMAT parquet)")
os.makedirs(os.path.join(out, "queries"))
queries = con.execute("SELECT query_nr, query FROM tpcds_queries()").fetchall()
assert len(queries) == 99, len(queries)
for n, sql in queries:
    with open(os.path.join(out, "queries", f"{n}.sql"), "w") as f:
        f.write(sql)
PY
touch "$OUT.tmp/.complete"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$OUT"
