"""The emulated pg_catalog: rewriting psql's SQL, and its own sandbox."""

from __future__ import annotations

import pytest

from trionet.sql.engine import Database, SqlError
from trionet.sql.pg import catalog


def run(quake_db, sql: str, params=()):
    session = Database(quake_db).open_session()
    try:
        return catalog.run(session, sql, params, user="u", database="quakes", version="v", max_rows=1000)
    finally:
        session.close()


def test_rewrite_psql_isms():
    sql = (
        "SELECT c.oid::pg_catalog.regclass FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) "
        "'^(quakes)$' COLLATE pg_catalog.default AND n.nspname !~ '^pg_toast' AND x = any (y)"
    )
    assert catalog.rewrite(sql) == (
        "SELECT c.oid FROM pg_class c WHERE c.relname  REGEXP  '^(quakes)$'  AND n.nspname  NOT REGEXP  "
        "'^pg_toast' AND x  IN (y)"
    )


def test_tables_columns_and_types(quake_db):
    names, decls, rows = run(
        quake_db,
        "SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relname = $1 ORDER BY a.attnum",
        ("kinds",),
    )
    assert names == ["relname", "attname", "format_type(a.atttypid, a.atttypmod)", "attnotnull"]
    assert decls[3] == "BOOLEAN"  # psql reads booleans as 't'/'f'
    assert [r[1:3] for r in rows] == [
        ("i", "bigint"), ("r", "double precision"), ("t", "text"), ("b", "bytea"), ("n", "text")
    ]


def test_catalog_holds_names_not_data(quake_db):
    with pytest.raises(SqlError) as info:
        run(quake_db, "SELECT * FROM pg_catalog.pg_class, quakes")
    assert info.value.code == "sql_error" and "no such table: quakes" in info.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT load_extension('x') FROM pg_catalog.pg_class",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT * FROM c, pg_catalog.pg_class",
        "DELETE FROM pg_catalog.pg_class",
        "PRAGMA pg_catalog.table_info(pg_class)",
    ],
)
def test_only_reading_is_allowed(quake_db, sql):
    with pytest.raises(SqlError) as info:
        run(quake_db, sql)
    assert info.value.code == "denied"


def test_work_is_bounded(quake_db):
    with pytest.raises(SqlError) as info:
        run(
            quake_db,
            "SELECT count(*) FROM pg_catalog.pg_attribute a, pg_catalog.pg_attribute b, pg_catalog.pg_attribute c, "
            "pg_catalog.pg_attribute d, pg_catalog.pg_attribute e, pg_catalog.pg_attribute f",
        )
    assert info.value.code == "too_big"


@pytest.mark.parametrize("pattern", ["^(a+)+$", "^(a|aa)*$", "a*a*a*a*b", "x{1,9}{1,9}"])
def test_regular_expressions_that_could_run_for_ever_are_refused(quake_db, pattern):
    with pytest.raises(SqlError):
        run(quake_db, "SELECT relname FROM pg_catalog.pg_class WHERE relname ~ $1", (pattern,))


def test_psql_patterns_match(quake_db):
    _, _, rows = run(quake_db, "SELECT relname FROM pg_catalog.pg_class WHERE relname ~ $1 ORDER BY 1", ("^(qu.*)$",))
    assert rows == [("quakes",), ("quakes_mag",), ("quakes_pkey",), ("quakes_time",)]
