"""The ``quakes`` table: one column per ComCat CSV column, in file order, and its indexes."""

from __future__ import annotations

import sqlite3

__all__ = ["COLUMNS", "INSERT_SQL", "NAMES", "REQUIRED_COLUMNS", "SCHEMA_SQL", "UPSERT_SQL", "create_schema"]

COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "TEXT"),
    ("latitude", "REAL"),
    ("longitude", "REAL"),
    ("depth", "REAL"),
    ("mag", "REAL"),
    ("magType", "TEXT"),
    ("nst", "INTEGER"),
    ("gap", "REAL"),
    ("dmin", "REAL"),
    ("rms", "REAL"),
    ("net", "TEXT"),
    ("id", "TEXT"),
    ("updated", "TEXT"),
    ("place", "TEXT"),
    ("type", "TEXT"),
    ("horizontalError", "REAL"),
    ("depthError", "REAL"),
    ("magError", "REAL"),
    ("magNst", "INTEGER"),
    ("status", "TEXT"),
    ("locationSource", "TEXT"),
    ("magSource", "TEXT"),
)
"""The ComCat CSV columns in file order, each with its SQLite type."""

REQUIRED_COLUMNS: tuple[str, ...] = ("time", "latitude", "longitude", "depth", "mag", "id")
"""Columns a CSV header must have; any other missing column loads as NULL."""

_COLUMN_DEFS = ",\n".join(
    f"    {name} {kind}" + (" PRIMARY KEY NOT NULL" if name == "id" else "") for name, kind in COLUMNS
)
_SCHEMA_STATEMENTS = (
    f"CREATE TABLE IF NOT EXISTS quakes (\n{_COLUMN_DEFS}\n)",
    "CREATE INDEX IF NOT EXISTS quakes_time ON quakes (time)",
    "CREATE INDEX IF NOT EXISTS quakes_mag ON quakes (mag)",
)
SCHEMA_SQL: str = "".join(stmt + ";\n" for stmt in _SCHEMA_STATEMENTS)
"""The ``quakes`` table (``id`` is the primary key) and its indexes on ``time`` and ``mag``."""

NAMES = tuple(name for name, _ in COLUMNS)
INSERT_SQL = (
    f"INSERT INTO quakes ({', '.join(NAMES)}) VALUES ({', '.join('?' * len(NAMES))})"
)
# Re-importing a row replaces the stored one unless the stored one was updated
# later, so the result does not depend on the order the files are imported in.
# A missing `updated` counts as oldest; on a tie the row imported last wins.
UPSERT_SQL = (
    INSERT_SQL
    + " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in NAMES if name != "id")
    + " WHERE coalesce(julianday(excluded.updated), 0) >= coalesce(julianday(quakes.updated), 0)"
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the ``quakes`` table and its indexes in ``conn`` unless they exist.

    Runs the statements one by one (not ``executescript``), so a transaction
    the caller has open stays open.
    """
    for stmt in _SCHEMA_STATEMENTS:
        conn.execute(stmt)
