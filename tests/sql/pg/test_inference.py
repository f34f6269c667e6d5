"""What the front infers from SQL text: parameter types (params.py) and expression column types (columns.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trionet.sql.pg import types
from trionet.sql.pg.columns import executed_names, expression_oids
from trionet.sql.pg.params import cast_oids, infer_param_oids, table_names

COLUMNS = {"id": "TEXT", "mag": "REAL", "nst": "INTEGER", "place": "TEXT", "n": "NUMERIC", "blob": None}


def test_parameters_take_the_type_of_what_they_meet():
    sql = (
        "SELECT * FROM quakes q WHERE q.mag > $1 AND $2 = nst AND id BETWEEN $3 AND $4 AND nst IN ($5, $6) "
        "AND nst LIKE $7 AND blob = $8 AND upper(place) = $9 LIMIT $10 OFFSET $11"
    )
    assert infer_param_oids(sql, (0,) * 11, COLUMNS) == (
        types.FLOAT8, types.INT8, types.TEXT, types.TEXT, types.INT8, types.INT8, types.TEXT,
        types.TEXT, types.TEXT, types.INT8, types.INT8,
    )  # fmt: skip


def test_declared_types_are_kept_and_inserts_follow_their_column_list():
    assert infer_param_oids("INSERT INTO quakes (nst, mag, id) VALUES ($1, $2, $3)", (0, 0, 23), COLUMNS) == (
        types.INT8, types.FLOAT8, 23,
    )  # fmt: skip
    assert infer_param_oids("UPDATE quakes SET mag = $1 WHERE id = '$2'", (0,), COLUMNS) == (types.FLOAT8,)


def test_casts_declare_at_parse_and_tables_are_named():
    assert cast_oids("SELECT $1::integer, $2::double precision, $3, $4::bytea", (0, 0, 0, 25)) == (
        types.INT4, types.FLOAT8, 0, 25,
    )  # fmt: skip
    assert table_names("select * from quakes join kinds on 1 where x = 'from nowhere'") == {"quakes", "kinds"}


def test_expression_types_only_where_sqlite_fixes_them():
    sql = "SELECT count(*) AS n, avg(mag) a, upper(place), 1, -2.5, 'x', CAST(nst AS REAL), mag, max(mag), f(x, y) FROM q"
    assert expression_oids(sql, 10) == [
        types.INT8, types.FLOAT8, types.TEXT, types.INT8, types.FLOAT8, types.TEXT, types.FLOAT8, None, None, None,
    ]  # fmt: skip
    assert expression_oids("SELECT 1 UNION SELECT 'a'", 1) == [None]  # a compound's parts may differ
    assert expression_oids("SELECT *, 1 FROM q", 6) == [None] * 6
    assert expression_oids("SELECT CAST(x AS BOOLEAN) FROM q", 1) == [None]  # SQLite keeps 5 as 5
    assert expression_oids("SELECT CAST(x AS NUMERIC) FROM q", 1) == [types.NUMERIC]  # inf too: numeric Infinity


def test_described_names_are_the_names_rows_get():
    sql = "SELECT CAST(?1 AS INTEGER), ?2 AS b, x, upper(?3) FROM t"
    described = ["CAST(NULL AS INTEGER)", "b", "x", "upper(NULL)"]
    assert executed_names(sql, described) == ["CAST(?1 AS INTEGER)", "b", "x", "upper(?3)"]


@given(st.text(max_size=200), st.integers(min_value=0, max_value=5))
def test_inference_never_raises(sql, n):
    assert len(expression_oids(sql, n)) == n
    assert len(infer_param_oids(sql, (0,) * n, COLUMNS)) == n
    assert len(cast_oids(sql, (0,) * n)) == n


@given(st.lists(st.sampled_from(["SELECT ", "count(", ")", ",", "'a,b'", " AS x", " FROM t", "(", "1", "$1"]), max_size=30))
def test_select_lists_of_sql_fragments(parts):
    sql = "".join(parts)
    for n in range(4):
        assert len(expression_oids(sql, n)) == n


SURE_EXPRESSIONS = [
    "count(x)", "length(x)", "avg(x)", "total(x)", "upper(x)", "typeof(x)", "hex(x)", "quote(x)",
    "CAST(x AS INTEGER)", "CAST(x AS REAL)", "CAST(x AS TEXT)", "CAST(x AS BLOB)", "CAST(x AS NUMERIC)",
    "printf('%s', x)", "group_concat(x)", "instr(x, 'a')", "substr(x, 1, 2)", "1", "-2.5", "'lit'",
]  # fmt: skip
VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.binary(max_size=20),
)


@pytest.mark.parametrize("expression", SURE_EXPRESSIONS)
@settings(max_examples=60)
@given(value=VALUES)
@example(value=math.inf)
@example(value=math.nan)
@example(value=b"\xff\xfe")
@example(value="9" * 30)
def test_what_an_expression_announces_fits_every_value(expression, value):
    # The Describe guarantee for expression columns: whatever the data, the
    # value SQLite computes encodes as the announced type, in text and binary.
    import sqlite3

    sql = f"SELECT {expression} AS v FROM t"
    (oid,) = expression_oids(sql, 1)
    assert oid is not None, expression
    conn = sqlite3.connect(":memory:")
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        (result,) = conn.execute(sql).fetchone()
    finally:
        conn.close()
    for binary in (False, True):
        types.encode_value(result, oid, binary)
