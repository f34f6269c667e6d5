"""A complete SQL result as the clients hand it over: columns, rows and what ``done`` said.

Pure data, no trio: the trio client (:mod:`trionet.sql.client`), the shell's
blocking client and the renderers (:mod:`trionet.sql.render`) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Result"]


@dataclass
class Result:
    """A complete result: column names, rows, and whether ``max_rows`` cut it."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool = False
    changes: int = 0
    last_insert_rowid: int | None = None
    server_ms: float = 0.0
