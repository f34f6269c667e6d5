"""Values between PostgreSQL's formats and SQLite, backend message encoding, and SQL text handling."""

from __future__ import annotations

import math
import sqlite3
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionet.sql.pg import messages as m
from trionet.sql.pg import types as t
from trionet.sql.pg.sqlstate import sqlstate
from trionet.sql.pg.statements import classify, command_tag, split

from .conftest import error_fields, read_messages

# --- backend messages -----------------------------------------------------------------


def test_backend_encoding_layouts():
    assert m.encode(m.ReadyForQuery("T")) == b"Z\0\0\0\x05T"
    assert m.encode(m.AuthenticationOk()) == b"R\0\0\0\x08\0\0\0\0"
    assert m.encode(m.CommandComplete("SELECT 3")) == b"C\0\0\0\x0dSELECT 3\0"
    assert m.encode(m.DataRow((b"ab", None))) == b"D\0\0\0\x10\0\x02\0\0\0\x02ab\xff\xff\xff\xff"
    assert m.encode(m.ParameterDescription((20, 25))) == b"t\0\0\0\x0e\0\x02\0\0\0\x14\0\0\0\x19"
    [(kind, body)] = read_messages(m.encode(m.RowDescription((m.Field("mag", t.FLOAT8, 8, 1),))))
    assert kind == "T"
    assert body == b"\0\x01mag\0" + struct.pack("!ihihih", 0, 0, 701, 8, -1, 1)


def test_error_response_fields():
    [(kind, body)] = read_messages(m.encode(m.ErrorResponse("42P01", "no such table: x", detail="d")))
    assert kind == "E"
    assert error_fields(body) == {"S": "ERROR", "V": "ERROR", "C": "42P01", "M": "no such table: x", "D": "d"}


def test_zero_bytes_in_text_cannot_split_a_message():
    [(_kind, body)] = read_messages(m.encode(m.CommandComplete("a\0b")))
    assert body == b"ab\0"


# --- parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, oid, binary, value",
    [
        (b"42", t.INT4, False, 42),
        (struct.pack("!h", -7), t.INT2, True, -7),
        (struct.pack("!q", -(2**63)), t.INT8, True, -(2**63)),
        (b"2.5", t.FLOAT8, False, 2.5),
        (struct.pack("!d", 2.5), t.FLOAT8, True, 2.5),
        (struct.pack("!f", 1.5), t.FLOAT4, True, 1.5),
        (struct.pack("!f", 1.1), t.FLOAT4, True, 1.1),
        (b"t", t.BOOL, False, 1),
        (b"\x00", t.BOOL, True, 0),
        (b"\\x00ff", t.BYTEA, False, b"\x00\xff"),
        (b"\x00\xff", t.BYTEA, True, b"\x00\xff"),
        (b"12.50", t.NUMERIC, False, 12.5),
        (b"12", t.NUMERIC, False, 12),
        (b"caf\xc3\xa9", t.UNKNOWN, False, "café"),
        (b"x", t.VARCHAR, True, "x"),
        (b"2024-01-01", 1082, False, "2024-01-01"),
    ],
)
def test_decode_param(data, oid, binary, value):
    got = t.decode_param(data, oid, binary)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "data, oid, binary, code",
    [
        (b"x", t.INT8, False, "22P02"),
        (b"\x00\x01", t.INT4, True, "22P03"),
        (b"maybe", t.BOOL, False, "22P02"),
        (b"\xff", t.TEXT, False, "22021"),
        (b"99999999999999999999", t.INT8, False, "22003"),
        (b"\0\0\0\0", 1082, True, "0A000"),
    ],
)
def test_decode_param_errors(data, oid, binary, code):
    with pytest.raises(t.ValueFormatError) as info:
        t.decode_param(data, oid, binary)
    assert info.value.code == code


def _numeric_binary(number: Decimal) -> bytes:
    return t.encode_value(number, t.NUMERIC, True)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**20), max_value=10**20))
def test_numeric_binary_round_trip(number):
    assert t.decode_numeric_binary(_numeric_binary(number)) == number


def test_numeric_binary_layout():
    # 12345.678: digits 1, 2345, 6780 (base 10000), weight 1, dscale 3.
    assert _numeric_binary(Decimal("12345.678")) == struct.pack("!hhHh3H", 3, 1, 0, 3, 1, 2345, 6780)
    assert _numeric_binary(Decimal("-0.5")) == struct.pack("!hhHh1H", 1, -1, 0x4000, 1, 5000)
    assert _numeric_binary(Decimal(0)) == struct.pack("!hhHh", 0, 0, 0, 0)


@given(st.binary(max_size=40), st.sampled_from([0, 16, 17, 20, 21, 23, 25, 700, 701, 705, 1043, 1082, 1700]), st.booleans())
def test_any_param_bytes_decode_or_raise_value_format_error(data, oid, binary):
    try:
        t.decode_param(data, oid, binary)
    except t.ValueFormatError:
        pass


@given(st.one_of(st.none(), st.binary(max_size=12), st.text(max_size=6).map(str.encode)), st.sampled_from(sorted(t.TEXTUAL)))
def test_textual_parameters_bind_as_their_text(data, oid):
    # The fast path decodes text-format parameters of these types itself: as decode_param does, or it gives up.
    try:
        expected = t.decode_param(data, oid or t.UNKNOWN, False)
    except t.ValueFormatError:
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
    else:
        assert expected == (None if data is None else data.decode("utf-8"))


# --- results -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, oid, text, binary",
    [
        (42, t.INT8, b"42", struct.pack("!q", 42)),
        (2.5, t.FLOAT8, b"2.5", struct.pack("!d", 2.5)),
        (math.inf, t.FLOAT8, b"Infinity", struct.pack("!d", math.inf)),
        ("é", t.TEXT, "é".encode(), "é".encode()),
        (b"\x00\xff", t.BYTEA, b"\\x00ff", b"\x00\xff"),
        (1, t.BOOL, b"t", b"\x01"),
        (3, t.FLOAT8, b"3.0", struct.pack("!d", 3.0)),
        (2.0, t.INT8, b"2", struct.pack("!q", 2)),
        (7, t.TEXT, b"7", b"7"),
        (-5, t.INT4, b"-5", struct.pack("!i", -5)),
        (5, t.INT2, b"5", struct.pack("!h", 5)),
    ],
)
def test_encode_value(value, oid, text, binary):
    assert t.encode_value(value, oid, False) == text
    assert t.encode_value(value, oid, True) == binary
    assert t.encode_value(None, oid, True) is None


@given(st.integers(-(2**64), 2**64) | st.sampled_from([2**15, -(2**15) - 1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1]),
       st.sampled_from([(t.INT2, "!h"), (t.INT4, "!i"), (t.INT8, "!q")]), st.booleans())
def test_integers_encode_within_their_range(value, layout, binary):
    oid, fmt = layout
    bits = struct.calcsize(fmt) * 8
    if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        assert t.encode_value(value, oid, binary) == (struct.pack(fmt, value) if binary else str(value).encode())
    else:
        with pytest.raises(t.ValueFormatError, match=f"integer out of range for int{bits // 8}"):
            t.encode_value(value, oid, binary)


@pytest.mark.parametrize(
    "value, oid", [("abc", t.INT8), (2.5, t.INT8), (b"x", t.FLOAT8), (5, t.BOOL), (2**31, t.INT4)]
)
def test_value_that_does_not_fit_its_column(value, oid):
    with pytest.raises(t.ValueFormatError):
        t.encode_value(value, oid, True)


def test_column_oid_rules():
    assert t.column_oid("INTEGER", None) == t.INT8
    assert t.column_oid("VARCHAR(20)", 5) == t.TEXT
    assert t.column_oid("BOOLEAN", 1) == t.BOOL
    assert t.column_oid("NUMERIC(10,2)", 1.5) == t.NUMERIC
    assert t.column_oid("DATE", None) == t.TEXT
    assert t.column_oid("TIMESTAMP", None) == t.TEXT
    assert t.column_oid("BLOB", None) == t.BYTEA
    assert t.column_oid("", 1.5) == t.FLOAT8
    assert t.column_oid(None, b"x") == t.BYTEA
    assert t.column_oid(None, None) == t.TEXT


# --- SQL text -------------------------------------------------------------------------------


def test_split_statements_and_placeholders():
    got = split("select '$1;', \"a;b\", $2 -- $3;\n; /* ; */ ; insert into t values ($1)")
    assert [s.sql for s in got] == ["select '$1;', \"a;b\", ?2 -- $3;", "/* ; */ ;"[:0] + "insert into t values (?1)"]
    assert [s.n_params for s in got] == [2, 1]
    assert got[1].words[:3] == ("INSERT", "INTO", "T")
    assert split("  ;  -- nothing\n ; ") == []
    assert split("select $1", placeholder="NULL")[0].sql == "select NULL"


def test_split_stops_past_its_limit_and_bounds_parameter_numbers():
    assert len(split("select 1;" * 50, limit=10)) == 11
    got = split("select $1, $99999999, $0")[0]
    assert got.n_params == 1
    assert got.sql == "select ?1, ?99999999, ?0"  # left for SQLite to reject


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("select [a;b], `c;d` from t; select 2", ["select [a;b], `c;d` from t", "select 2"]),
        ("select 'it''s; fine'; select 2", ["select 'it''s; fine'", "select 2"]),
        ("select '-- not a comment;'; select 2", ["select '-- not a comment;'", "select 2"]),
        ("select 1 /* ; */; /* only a comment */;", ["select 1 /* ; */"]),
        ("select 'unterminated; select 2", ["select 'unterminated; select 2"]),
        ("select 1 - -1; select 4/2", ["select 1 - -1", "select 4/2"]),
    ],
)
def test_split_tricky_texts(sql, expected):
    got = [s.sql for s in split(sql)]
    assert got == expected
    for text in got:  # each piece is one statement for SQLite too
        assert sqlite3.complete_statement(text + ";") or "unterminated" in text


@given(st.text(max_size=200))
def test_split_and_classify_never_raise(sql):
    for statement in split(sql):
        assert statement.sql.strip() == statement.sql
        classify(statement)
        command_tag(statement.words, rows=1, changes=1, returns_rows=False)


@pytest.mark.parametrize(
    "sql, kind, name, value",
    [
        ("BEGIN", "begin", "", None),
        ("begin immediate transaction", "begin", "", "IMMEDIATE"),
        ("start transaction isolation level serializable", "begin", "", None),
        ("commit", "commit", "", None),
        ("END", "commit", "", None),
        ("rollback", "rollback", "", None),
        ("set application_name = 'x y'", "set", "application_name", "x y"),
        ("SET search_path TO a, 'b'", "set", "search_path", "a, b"),
        ("set time zone 'Europe/Paris'", "set", "timezone", "Europe/Paris"),
        ("SET SESSION DateStyle TO ISO", "set", "datestyle", "ISO"),
        ("show transaction_isolation", "show", "transaction_isolation", None),
        ("SHOW TRANSACTION ISOLATION LEVEL", "show", "transaction_isolation", None),
        ("reset all", "reset", "all", None),
        ("select version()", "function", "version", None),
        ("SELECT pg_catalog.current_database()", "function", "current_database", None),
        ("select * from quakes", "sql", "", None),
        ("select version(), current_setting('TimeZone')", "catalog", "", None),
        ("select version() from quakes", "sql", "", None),
        ("insert into notes values ('see pg_catalog.pg_class')", "sql", "", None),
        ("rollback to savepoint a", "sql", "", None),
        ("copy quakes to stdout", "unsupported", "", None),
        ("SELECT c.relname FROM pg_catalog.pg_class c", "catalog", "", None),
        ("select * from information_schema.tables", "catalog", "", None),
        ("select * from information_schema.routines", "unsupported", "", None),
    ],
)
def test_classify(sql, kind, name, value):
    command = classify(split(sql)[0])
    assert (command.kind, command.name, command.value) == (kind, name, value)


def test_copy_is_feature_not_supported():
    assert classify(split("COPY quakes FROM stdin")[0]).tag == "0A000"


@pytest.mark.parametrize(
    "sql, rows, changes, returns_rows, tag",
    [
        ("select 1", 1, 0, True, "SELECT 1"),
        ("insert into t values (1)", 0, 3, False, "INSERT 0 3"),
        ("insert into t values (1) returning a", 2, 2, True, "INSERT 0 2"),
        ("update t set a = 1", 0, 5, False, "UPDATE 5"),
        ("delete from t", 0, 0, False, "DELETE 0"),
        ("create temp table x (a)", 0, 0, False, "CREATE TABLE"),
        ("create unique index i on t(a)", 0, 0, False, "CREATE INDEX"),
        ("drop view v", 0, 0, False, "DROP VIEW"),
        ("savepoint a", 0, 0, False, "SAVEPOINT"),
        ("with x as (select 1) select * from x", 1, 0, True, "SELECT 1"),
    ],
)
def test_command_tag(sql, rows, changes, returns_rows, tag):
    assert command_tag(split(sql)[0].words, rows=rows, changes=changes, returns_rows=returns_rows) == tag


@pytest.mark.parametrize(
    "code, message, state",
    [
        ("sql_error", 'near "selec": syntax error', "42601"),
        ("sql_error", "no such table: nope", "42P01"),
        ("sql_error", "no such column: nope", "42703"),
        ("read_only", "the server is read-only", "25006"),
        ("denied", "the function load_extension is not allowed", "42501"),
        ("timeout", "too long", "57014"),
        ("constraint", "UNIQUE constraint failed: t.a", "23505"),
        ("constraint", "NOT NULL constraint failed: t.b", "23502"),
        ("constraint", "FOREIGN KEY constraint failed", "23503"),
        ("constraint", "CHECK constraint failed: c", "23514"),
        ("busy", "database is locked", "55P03"),
    ],
)
def test_sqlstate(code, message, state):
    assert sqlstate(code, message) == state


@pytest.mark.parametrize(
    ("value", "text", "binary"),
    [
        (math.inf, b"Infinity", struct.pack("!hhHh", 0, 0, 0xD000, 0)),
        (-math.inf, b"-Infinity", struct.pack("!hhHh", 0, 0, 0xF000, 0)),
        (math.nan, b"NaN", struct.pack("!hhHh", 0, 0, 0xC000, 0)),
    ],
)
def test_numeric_special_values_as_postgresql_15_sends_them(value, text, binary):
    assert t.encode_value(value, t.NUMERIC, False) == text
    assert t.encode_value(value, t.NUMERIC, True) == binary
    assert t.decode_numeric_binary(binary).is_nan() or t.decode_numeric_binary(binary) == Decimal(value)


_WORDS = st.sampled_from(["SELECT", "WITH", "VALUES", "INSERT", "REPLACE", "UPDATE", "DELETE", "CREATE", "DROP",
                          "ALTER", "TABLE", "INDEX", "OR", "TEMP", "SAVEPOINT", "PRAGMA", "ROLLBACK", "", "X" * 40])


@given(st.lists(_WORDS, max_size=4).map(tuple), st.integers(0, 300), st.integers(0, 300))
def test_remembered_completions_are_command_tags(words, rows, changes):
    from trionet.sql.pg.executor import _completion

    expected = m.command_complete(command_tag(words, rows=rows, changes=changes, returns_rows=True))
    assert _completion(words, rows, changes) == expected


@given(st.none() | st.binary(max_size=300))
def test_one_value_row_is_data_row(value):
    assert m.one_value_row(value) == m.data_row((value,))


_SQLITE_VALUES = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-40_000, 40_000)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(["12", " 7 ", "t", "1.5", "abc"])
    | st.binary(max_size=8)
)
_OIDS = st.sampled_from([t.INT2, t.INT4, t.INT8, t.TEXT, t.FLOAT8, t.BOOL, t.BYTEA, t.NUMERIC, t.VARCHAR])


def _generic_rows(rows, oids, binary):
    # What the slow path sends (Executor._send_rows): data_row of encode_value, row by row.
    try:
        return b"".join(m.data_row([t.encode_value(v, o, b) for v, o, b in zip(row, oids, binary)]) for row in rows)
    except t.ValueFormatError:
        return None


@given(st.data(), st.integers(1, 3), st.integers(0, 3))
def test_fast_path_rows_are_the_generic_encoders_bytes(data, width, count):
    from trionet.sql.pg.executor import _encode_rows

    oids = tuple(data.draw(_OIDS) for _ in range(width))
    binary = tuple(data.draw(st.booleans()) for _ in range(width))
    rows = [tuple(data.draw(_SQLITE_VALUES) for _ in range(width)) for _ in range(count)]
    assert _encode_rows(rows, oids, binary) == _generic_rows(rows, oids, binary)
