"""Printing SQL results for people and scripts: table, expanded lines, markdown, JSON, CSV.

Used by ``trionet sql query``, ``trionet sql shell`` and the demo, so they
print results the same way. The functions here are pure: a result (and, for
the table, the width of the terminal) goes in, text comes out, so every rule
is unit-tested without a terminal.

The rules that keep a result whole:

- A table never drops or squeezes a column. When it is wider than the
  terminal it switches to expanded records (one ``column | value`` line
  each), as psql's ``\\x auto`` does; ``width=None`` (output to a pipe or a
  file) means no limit, so a pipe always gets the full table.
- A cell is never cut; control characters in it are shown escaped
  (``\\n``) so one row stays one line.
- A statement without columns (a write) says how many rows it changed.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re

from rich import box
from rich.cells import cell_len
from rich.table import Table

from trionet.sql.protocol import encode_value
from trionet.sql.result import Result

__all__ = [
    "EXPANDED",
    "FORMATS",
    "changed_line",
    "format_result",
    "result_table",
    "row_count",
    "to_csv",
    "to_json",
    "truncation_notice",
]

FORMATS = ("table", "line", "markdown", "json", "csv")
"""Output formats: ``line`` is the expanded table (one ``column | value`` line per value)."""

EXPANDED = ("auto", "on", "off")
"""When ``table`` prints expanded records: when it does not fit, always, never."""

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Every control character, and the Unicode line and paragraph separators: they
# would break a row over lines or move the terminal's cursor.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'" if len(value) <= 32 else f"<blob {len(value)} bytes>"
    return str(value)


def _display(value) -> str:
    """A value as one line of text for the table, expanded and markdown formats."""
    return _CONTROL.sub(_escape, _cell(value))


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - cell_len(text))
    return fill + text if right else text + fill


def _numeric_columns(result: Result) -> list[bool]:
    return [
        bool(result.rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in result.rows)
        for i in range(len(result.columns))
    ]


def result_table(result: Result, title: str | None = None) -> Table:
    """A rich table of ``result``; numbers right-aligned, NULL shown as NULL (the demo's look)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    for name, is_num in zip(result.columns, _numeric_columns(result)):
        table.add_column(name, justify="right" if is_num else "left", overflow="fold")
    for row in result.rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def _table_lines(result: Result, headers: bool) -> list[str]:
    cells = [[_display(v) for v in row] for row in result.rows]
    numeric = _numeric_columns(result)
    names = [_display(n) for n in result.columns]
    widths = [cell_len(name) if headers else 0 for name in names]
    for row in cells:
        widths = [max(w, cell_len(c)) for w, c in zip(widths, row)]
    lines = []
    if headers:
        lines.append(" | ".join(_pad(n, w, False) for n, w in zip(names, widths)).rstrip())
        lines.append("-+-".join("-" * w for w in widths))
    for row in cells:
        lines.append(" | ".join(_pad(c, w, r) for c, w, r in zip(row, widths, numeric)).rstrip())
    return lines


def _expanded_lines(result: Result, width: int | None) -> list[str]:
    if not result.rows:
        return ["(no rows)"]
    names = [_display(n) for n in result.columns]
    name_width = max(cell_len(n) for n in names)
    value_width = max(cell_len(_display(v)) for row in result.rows for v in row) if result.columns else 0
    rule = name_width + 3 + value_width
    if width is not None:
        rule = min(rule, width)
    lines = []
    for number, row in enumerate(result.rows, 1):
        head = f"-[ RECORD {number} ]"
        lines.append(head + "-" * max(0, rule - len(head)))
        for name, value in zip(names, row):
            lines.append(f"{_pad(name, name_width, False)} | {_display(value)}".rstrip())
    return lines


def _markdown_lines(result: Result) -> list[str]:
    def md(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|")

    numeric = _numeric_columns(result)
    lines = [
        "| " + " | ".join(md(_display(n)) for n in result.columns) + " |",
        "| " + " | ".join("---:" if r else "---" for r in numeric) + " |",
    ]
    for row in result.rows:
        lines.append("| " + " | ".join(md(_display(v)) for v in row) + " |")
    return lines


def to_json(result: Result) -> str:
    """``{"columns": [...], "rows": [[...]], "truncated": false}``, with the protocol's value encoding.

    A statement that changed rows (or has no columns, as a write has) also
    carries ``changes`` and ``last_insert_rowid``.
    """
    obj = {
        "columns": result.columns,
        "rows": [[encode_value(v) for v in row] for row in result.rows],
        "truncated": result.truncated,
    }
    if result.changes or not result.columns:
        obj["changes"] = result.changes
        obj["last_insert_rowid"] = result.last_insert_rowid
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def to_csv(result: Result, headers: bool = True) -> str:
    """A header line (unless ``headers`` is false), then one line per row; NULL is empty, a BLOB is base64.

    Lines end in ``\n``; a value holding a ``\r`` or ``\n`` is quoted (the
    csv module quotes only the characters of its line terminator, so each
    row is written with ``\r\n`` and its terminator replaced).
    """
    out = io.StringIO()
    line = io.StringIO()
    writer = csv.writer(line, lineterminator="\r\n")

    def write(values) -> None:
        writer.writerow(values)
        out.write(line.getvalue()[:-2] + "\n")
        line.seek(0)
        line.truncate()

    if headers:
        write(result.columns)
    for row in result.rows:
        write(["" if v is None else base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in row])
    return out.getvalue()


def changed_line(result: Result) -> str:
    """``N row(s) changed``: what a statement without columns prints."""
    return f"{result.changes} row(s) changed"


def format_result(
    result: Result,
    fmt: str = "table",
    *,
    width: int | None = None,
    headers: bool = True,
    expanded: str = "auto",
) -> str:
    """Return ``result`` as text in ``fmt`` (one of :data:`FORMATS`), ending in a newline.

    Args:
        result: what the server answered.
        fmt: the output format.
        width: the terminal's width in cells, or None when the output is not
            a terminal (no limit: nothing is ever cut to fit).
        headers: print column names (table and csv; markdown always has them).
        expanded: for ``table``, one of :data:`EXPANDED`. ``auto`` prints
            expanded records when the table is wider than ``width``.

    A statement without columns prints ``N row(s) changed`` in the table,
    line and markdown formats, its counts in JSON, and nothing in CSV (a
    CSV file holds rows; :func:`row_count` gives the line for stderr).

    Raises:
        ValueError: ``fmt`` or ``expanded`` is not a known value.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if expanded not in EXPANDED:
        raise ValueError(f"unknown expanded setting {expanded!r}; one of {', '.join(EXPANDED)}")
    if fmt == "json":
        return to_json(result) + "\n"
    if fmt == "csv":
        return to_csv(result, headers) if result.columns else ""
    if not result.columns:
        return changed_line(result) + "\n"
    if fmt == "markdown":
        lines = _markdown_lines(result)
    elif fmt == "line":
        lines = _expanded_lines(result, width)
    else:
        lines = _table_lines(result, headers)
        too_wide = width is not None and len(result.columns) > 1 and max(map(cell_len, lines)) > width
        if expanded == "on" or (expanded == "auto" and too_wide):
            lines = _expanded_lines(result, width)
    return "\n".join(lines) + "\n"


def row_count(result: Result) -> str:
    """The status line after a result: ``N row(s)``, ``N row(s) (truncated ...)`` or ``N row(s) changed``."""
    if not result.columns:
        return changed_line(result)
    text = f"{len(result.rows)} row(s)"
    if result.truncated:
        text += " (truncated by max-rows)"
    if result.changes:
        text += f", {result.changes} changed"
    return text


def truncation_notice(result: Result) -> str | None:
    """The line for stderr when ``max_rows`` cut the result, else None."""
    if not result.truncated:
        return None
    return (
        f"note: only the first {len(result.rows)} row(s) are shown: the result was cut by max-rows "
        "(raise --max-rows, up to the server's own cap, or add a LIMIT/WHERE)"
    )
