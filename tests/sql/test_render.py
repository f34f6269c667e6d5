"""The pure result printer: nothing is dropped, squeezed or cut, whatever the width."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionet.sql.client import Result
from trionet.sql.render import format_result, row_count, to_csv, truncation_notice

# The 22 columns of the USGS catalogue's quakes table, with a real row's values.
USGS_COLUMNS = [
    "time", "latitude", "longitude", "depth", "mag", "magType", "nst", "gap", "dmin", "rms", "net", "id",
    "updated", "place", "type", "horizontalError", "depthError", "magError", "magNst", "status",
    "locationSource", "magSource",
]
USGS_ROW = (
    "2011-11-06T03:53:10.000Z", 35.5325, -96.7651, 5.2, 5.7, "mww", None, 22.0, None, 0.95, "us",
    "usp000jadn", "2021-11-09T21:12:27.366Z", "11 km NW of Prague, Oklahoma", "earthquake", None, None,
    None, None, "reviewed", "us", "us",
)


def quakes(n: int = 2) -> Result:
    return Result(USGS_COLUMNS, [USGS_ROW] * n)


def test_a_wide_table_on_a_narrow_terminal_switches_to_expanded_records():
    text = format_result(quakes(), "table", width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("-[ RECORD 1 ]") and "-[ RECORD 2 ]" in text
    # every column, one "column | value" line each, per record
    for name, value in zip(USGS_COLUMNS, USGS_ROW):
        shown = "NULL" if value is None else str(value)
        assert sum(1 for line in lines if line.split(" | ")[0].strip() == name) == 2
        assert any(line.split(" | ")[0].strip() == name and line.endswith(shown) for line in lines)


def test_a_table_that_fits_stays_a_table():
    result = Result(["id", "mag"], [("q1", 3.5), ("q2", 10.25)])
    assert format_result(result, "table", width=80) == "id | mag\n---+------\nq1 |   3.5\nq2 | 10.25\n"


def test_output_to_a_pipe_keeps_all_22_columns_on_one_line_per_row():
    text = format_result(quakes(), "table", width=None)
    header, _, *rows = text.splitlines()
    assert [c.strip() for c in header.split(" | ")] == USGS_COLUMNS
    assert len(rows) == 2 and len(rows[0]) > 200  # never cut to a terminal's width
    assert "11 km NW of Prague, Oklahoma" in rows[0] and rows[0].rstrip().endswith("us")


def test_thirty_columns_are_never_an_empty_table():
    result = Result([f"column_{i}" for i in range(30)], [tuple(range(30))])
    for width in (40, 80, 120, None):
        text = format_result(result, "table", width=width)
        for i in range(30):
            assert f"column_{i}" in text


def test_expanded_on_and_off_are_obeyed():
    result = Result(["a", "b"], [(1, "x")])
    assert format_result(result, "table", width=200, expanded="on").startswith("-[ RECORD 1 ]")
    wide = format_result(quakes(), "table", width=40, expanded="off")
    assert wide.splitlines()[0].split(" | ")[0].strip() == "time"  # a table, wider than the terminal


def test_line_format_has_one_column_value_line_per_value():
    result = Result(["id", "place"], [("q1", "a\nb"), ("q2", None)])
    assert format_result(result, "line") == (
        "-[ RECORD 1 ]\nid    | q1\nplace | a\\nb\n-[ RECORD 2 ]\nid    | q2\nplace | NULL\n"
    )


def test_markdown_format_escapes_pipes_and_aligns_numbers_right():
    result = Result(["name", "n"], [("a|b", 1), ("c", None)])
    assert format_result(result, "markdown") == (
        "| name | n |\n| --- | ---: |\n| a\\|b | 1 |\n| c | NULL |\n"
    )


def test_a_write_says_how_many_rows_it_changed():
    write = Result([], [], changes=3, last_insert_rowid=17)
    for fmt in ("table", "line", "markdown"):
        assert format_result(write, fmt) == "3 row(s) changed\n"
    assert format_result(write, "csv") == ""
    assert json.loads(format_result(write, "json")) == {
        "columns": [], "rows": [], "truncated": False, "changes": 3, "last_insert_rowid": 17,
    }
    assert row_count(write) == "3 row(s) changed"


def test_truncation_is_told_and_the_count_says_so():
    cut = Result(["x"], [(1,), (2,)], truncated=True)
    assert "only the first 2 row(s)" in truncation_notice(cut)
    assert row_count(cut) == "2 row(s) (truncated by max-rows)"
    assert truncation_notice(Result(["x"], [(1,)])) is None


def test_headers_off_drops_the_header_of_table_and_csv():
    result = Result(["a", "b"], [(1, 2)])
    assert format_result(result, "table", headers=False) == "1 | 2\n"
    assert format_result(result, "csv", headers=False) == "1,2\n"


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="unknown format"):
        format_result(Result(["a"], []), "xml")


values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(), st.binary(max_size=40))


@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            st.lists(st.text(min_size=1, max_size=12), min_size=n, max_size=n),
            st.lists(st.tuples(*[values] * n), max_size=5),
        )
    ),
    st.sampled_from([20, 80, 120, None]),
)
def test_every_value_survives_every_width(table, width):
    columns, rows = table
    result = Result(columns, rows)
    text = format_result(result, "table", width=width)
    if rows:
        row_lines = len(text.splitlines())
        # one line per row (plus header and rule), or one per value (plus a record line per row)
        assert row_lines in (len(rows) + 2, len(rows) * (len(columns) + 1))
    parsed = list(csv.reader(io.StringIO(to_csv(result))))
    assert parsed[0] == columns and len(parsed) == len(rows) + 1
