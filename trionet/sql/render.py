"""Printing SQL results for people and scripts: a table, JSON, or CSV.

Used by ``trionet sql query``, ``trionet sql shell`` and the demo, so the
three print results the same way.
"""

from __future__ import annotations

import base64
import csv
import io
import json

from rich import box
from rich.console import Console
from rich.table import Table

from trionet.sql.client import Result
from trionet.sql.protocol import encode_value

__all__ = ["FORMATS", "render", "result_table", "to_csv", "to_json"]

FORMATS = ("table", "json", "csv")


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'" if len(value) <= 32 else f"<blob {len(value)} bytes>"
    return str(value)


def result_table(result: Result, title: str | None = None) -> Table:
    """A rich table of ``result``; numbers right-aligned, NULL shown as NULL."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    numeric = [
        bool(result.rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in result.rows)
        for i in range(len(result.columns))
    ]
    for name, is_num in zip(result.columns, numeric):
        table.add_column(name, justify="right" if is_num else "left", overflow="fold")
    for row in result.rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def _footer(result: Result) -> str:
    if not result.columns:
        return f"ok, {result.changes} row(s) changed"
    text = f"{len(result.rows)} row(s)"
    if result.truncated:
        text += " (truncated by max-rows)"
    return text


def to_json(result: Result) -> str:
    """``{"columns": [...], "rows": [[...]], "truncated": false}``, with the protocol's value encoding."""
    return json.dumps(
        {
            "columns": result.columns,
            "rows": [[encode_value(v) for v in row] for row in result.rows],
            "truncated": result.truncated,
        },
        ensure_ascii=False,
        allow_nan=False,
    )


def to_csv(result: Result) -> str:
    """A header line, then one line per row; NULL is empty, a BLOB is base64."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(
            ["" if v is None else base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in row]
        )
    return out.getvalue()


def render(console: Console, result: Result, fmt: str = "table", *, footer: bool = True) -> None:
    """Print ``result`` to ``console`` in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        console.print(to_json(result), markup=False, highlight=False, soft_wrap=True)
    elif fmt == "csv":
        console.print(to_csv(result), markup=False, highlight=False, soft_wrap=True, end="")
    else:
        if result.columns:
            console.print(result_table(result))
        if footer:
            console.print(f"[dim]{_footer(result)}[/dim]")
