"""ComCat CSV import: stream USGS event-search exports into the ``quakes`` table.

Plain ``.csv`` files and xz-compressed ``.csv.xz`` files (the form in which
trionet ships the catalogue) are both read as streams, never whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import lzma
import math
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from trionet.sql.catalog.schema import (
    COLUMNS,
    NAMES,
    REQUIRED_COLUMNS,
    UPSERT_SQL,
    create_schema,
)

__all__ = ["BadRow", "ImportReport", "import_usgs"]

_CHUNK_ROWS = 2000  # rows per executemany and between progress calls

_REAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
# What SQLite's date functions understand, and what ComCat writes: 2011-11-06T03:53:10.130Z.
_TIME_RE = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]"
    r"(?::[0-5][0-9](?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?\Z"
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class BadRow:
    """A CSV record that was not imported: where it starts, and why it was refused."""

    path: str
    line: int  # the physical line (1-based) where the record starts
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ImportReport:
    """What :func:`import_usgs` did.

    Attributes:
        rows_read: CSV records read after the header lines (blank lines are not records).
        rows_imported: records that were valid and written. A record that
            loses to a stored row with a later ``updated`` still counts: it
            was accepted, the newer version was kept.
        bad_rows: every record that was refused; ``rows_imported +
            len(bad_rows) == rows_read``.
    """

    rows_read: int = 0
    rows_imported: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)


class _BadValue(Exception):
    """A field cannot be stored; the message is the row's reason."""


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _to_real(name: str, value: str) -> float:
    if not _REAL_RE.match(value):
        raise _BadValue(f"{name}: not a number: {_short(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _BadValue(f"{name}: out of range: {_short(value)}")
    return number


def _to_int(name: str, value: str) -> int:
    if not _INT_RE.match(value):
        raise _BadValue(f"{name}: not an integer: {_short(value)}")
    number = int(value)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _BadValue(f"{name}: out of range: {_short(value)}")
    return number


def _to_time(name: str, value: str) -> str:
    if not _TIME_RE.match(value):
        raise _BadValue(f"{name}: not an ISO-8601 time: {_short(value)}")
    return value


_CONVERTERS: dict[str, Callable[[str, str], object]] = {
    name: {"REAL": _to_real, "INTEGER": _to_int}[kind] for name, kind in COLUMNS if kind != "TEXT"
}
_CONVERTERS["time"] = _CONVERTERS["updated"] = _to_time


@dataclass(frozen=True)
class _Plan:
    """How to turn one record of a file into a ``quakes`` row."""

    width: int  # fields per record, from the header
    fields: tuple[tuple[str, int | None, Callable[[str, str], object] | None], ...]

    @classmethod
    def from_header(cls, path: str, header: list[str]) -> _Plan:
        names = [name.strip() for name in header]
        duplicates = sorted({name for name in names if names.count(name) > 1 and name in NAMES})
        if duplicates:
            raise ValueError(f"{path}: duplicate columns in the header: {', '.join(duplicates)}")
        missing = [name for name in REQUIRED_COLUMNS if name not in names]
        if missing:
            raise ValueError(
                f"{path}: not a ComCat CSV file: the header has no {', '.join(missing)} column"
                f"{'s' if len(missing) > 1 else ''} (header: {','.join(names)[:200]})"
            )
        position = {name: i for i, name in enumerate(names)}
        return cls(
            width=len(names),
            fields=tuple((name, position.get(name), _CONVERTERS.get(name)) for name in NAMES),
        )

    def convert(self, record: list[str]) -> tuple:
        """Return the row to store for ``record``.

        Raises:
            _BadValue: the record cannot be stored; the message says why.
        """
        if len(record) != self.width:
            raise _BadValue(f"expected {self.width} fields, got {len(record)}")
        row = []
        for name, index, convert in self.fields:
            value = record[index] if index is not None else ""
            if value == "":
                if name in ("id", "time"):
                    raise _BadValue(f"missing {name}")
                row.append(None)
            elif convert is None:
                row.append(value)
            else:
                row.append(convert(name, value))
        return tuple(row)


def _records(reader: Iterator[list[str]], first_line: int) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """Yield ``(line where the record starts, fields or the csv.Error it raised)``.

    Blank lines are skipped. ``reader.line_num`` counts physical lines read so
    far, so a record starts on the line after the previous one ended, however
    many newlines its quoted fields hold.
    """
    start = first_line
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            item: list[str] | csv.Error = exc
        else:
            item = record
        if item != []:
            yield start, item
        start = reader.line_num + 1  # type: ignore[attr-defined]


@contextlib.contextmanager
def _open_csv(path: str) -> Iterator[tuple[io.BufferedReader, Iterator[list[str]]]]:
    """Open ``path`` for streaming: the file on disk (for progress) and a csv reader over its text.

    A name ending in ``.xz`` is decompressed on the fly; progress still counts
    the bytes read from disk, which is what :func:`import_usgs` sums.
    """
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        data = stack.enter_context(lzma.LZMAFile(raw)) if path.endswith(".xz") else raw
        # utf-8-sig: a byte-order mark (spreadsheet exports) must not become part of "time".
        text = stack.enter_context(io.TextIOWrapper(data, encoding="utf-8-sig", newline=""))
        yield raw, csv.reader(text, strict=True)


def _read_header(path: str, reader: Iterator[list[str]]) -> tuple[_Plan, int]:
    """Read the header record; return the plan and the line number after it."""
    for line, item in _records(reader, 1):
        if isinstance(item, csv.Error):
            raise ValueError(f"{path}:{line}: cannot read the CSV header: {item}")
        return _Plan.from_header(path, item), reader.line_num + 1  # type: ignore[attr-defined]
    raise ValueError(f"{path}: empty file: expected a ComCat CSV header line")


def import_usgs(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    db_path: str | os.PathLike,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import ComCat CSV files (plain or ``.xz``) into the ``quakes`` table of ``db_path`` (created if needed).

    Each file is streamed (never read whole) and its columns are found by
    name in its header, so reordered and extra columns are fine. Empty
    fields are stored as NULL. A record that cannot be stored (wrong number
    of fields, a non-numeric value in a numeric column, a missing ``id`` or
    ``time``, a bad timestamp, malformed quoting) is reported in
    :attr:`ImportReport.bad_rows` with the line it starts on; the other
    records still import.

    Importing is idempotent: rows are upserted on ``id``, and the version
    with the later ``updated`` wins (the one imported last on a tie, or when
    neither has ``updated``). Re-importing a file, or importing an older
    export after a newer one, leaves the table as it was.

    Args:
        paths: one CSV file or several.
        db_path: the SQLite database.
        progress: called now and then as ``progress(bytes_done, bytes_total)``,
            counting the bytes of all the files.

    Returns:
        The counts and the bad rows of all the files together.

    Raises:
        ValueError: a file is not a ComCat CSV (no header, a required column
            missing, not UTF-8); the message names the file.
        OSError: a file cannot be read.
        sqlite3.Error: the database cannot be written.

    Error handling:
        Every header is checked before anything is written, so a wrong file
        in the list changes nothing. Each file is imported in its own
        transaction: if one fails part way (a decoding error), the files
        before it stay imported and it leaves no rows behind.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [os.fspath(p) for p in paths]
    sizes = [os.path.getsize(p) for p in files]
    total = sum(sizes)
    for path in files:  # fail before writing anything
        with _open_csv(path) as (_, reader):
            try:
                _read_header(path, reader)
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}: not UTF-8 text: {exc}") from None
            except (lzma.LZMAError, EOFError) as exc:
                raise ValueError(f"{path}: not an xz file: {exc}") from None

    report = ImportReport()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        create_schema(conn)
        done = 0
        if progress is not None:
            progress(0, total)
        for path, size in zip(files, sizes):

            def file_progress(position: int, done=done, size=size) -> None:
                if progress is not None:
                    progress(done + min(position, size), total)

            _import_file(conn, path, report, file_progress)
            done += size
            if progress is not None:
                progress(done, total)
    finally:
        conn.close()
    return report


def _import_file(
    conn: sqlite3.Connection, path: str, report: ImportReport, progress: Callable[[int], None]
) -> None:
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not half way through
    try:
        with _open_csv(path) as (raw, reader):
            plan, first_line = _read_header(path, reader)
            chunk: list[tuple] = []
            for line, item in _records(reader, first_line):
                report.rows_read += 1
                if isinstance(item, csv.Error):
                    report.bad_rows.append(BadRow(path, line, f"malformed CSV: {item}"))
                    continue
                try:
                    chunk.append(plan.convert(item))
                except _BadValue as exc:
                    report.bad_rows.append(BadRow(path, line, str(exc)))
                    continue
                if len(chunk) >= _CHUNK_ROWS:
                    conn.executemany(UPSERT_SQL, chunk)
                    report.rows_imported += len(chunk)
                    chunk.clear()
                    progress(raw.tell())
            conn.executemany(UPSERT_SQL, chunk)
            report.rows_imported += len(chunk)
        conn.execute("COMMIT")
    except UnicodeDecodeError as exc:
        conn.execute("ROLLBACK")
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from None
    except (lzma.LZMAError, EOFError) as exc:  # EOFError: an xz stream cut short
        conn.execute("ROLLBACK")
        raise ValueError(f"{path}: not a whole xz file: {exc}") from None
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


