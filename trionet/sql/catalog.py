"""The earthquake catalogue behind ``trionet sql``: ComCat CSV import, USGS download, synthetic sample.

Three ways to get a ``quakes`` table, all with the same schema
(:data:`SCHEMA_SQL`, one column per ComCat CSV column, in file order):

- :func:`import_usgs` loads ComCat CSV files (as exported by the USGS event
  search, or as written by :func:`fetch_usgs`) into an SQLite database,
  streaming them row by row and reporting every row it cannot load;
- :func:`fetch_usgs` downloads such a CSV from the USGS FDSN event web
  service for the contiguous United States, window by window;
- :func:`build_sample` writes a deterministic synthetic catalogue, so the
  demo and the tests need neither the network nor the real data set, and
  :func:`ensure_sample` keeps one built in the user's cache.

Everything here is synchronous and blocking: the CLI calls it directly,
before any server starts.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import datetime
import functools
import http.client
import io
import itertools
import math
import os
import pathlib
import random
import re
import sqlite3
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "COLUMNS",
    "REQUIRED_COLUMNS",
    "SAMPLE_VERSION",
    "SCHEMA_SQL",
    "USGS_URL",
    "BadRow",
    "ImportReport",
    "build_sample",
    "create_schema",
    "ensure_sample",
    "fetch_usgs",
    "import_usgs",
    "sample_path",
]

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

SAMPLE_VERSION = 1
"""The sample generator's version, stored as ``PRAGMA user_version`` in a sample database.

Bump it whenever :func:`build_sample` would write different rows, so that
:func:`ensure_sample` rebuilds the caches built by the older generator.
"""

# PRAGMA application_id of a sample database ("TQKS"): tells our cache from a user's database.
_SAMPLE_APPLICATION_ID = 0x54514B53

USGS_URL = "https://earthquake.usgs.gov/fdsnws/event/1/query"
"""The USGS FDSN event web service (ComCat)."""

_CONTIGUOUS_US = {"minlatitude": "24.6", "maxlatitude": "50", "minlongitude": "-125", "maxlongitude": "-65"}
_SERVICE_LIMIT = 20_000  # the most events the service returns for one query
_CHUNK_ROWS = 2000  # rows per executemany and between progress calls

_NAMES = tuple(name for name, _ in COLUMNS)
_INSERT_SQL = (
    f"INSERT INTO quakes ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})"
)
# Re-importing a row replaces the stored one unless the stored one was updated
# later, so the result does not depend on the order the files are imported in.
# A missing `updated` counts as oldest; on a tie the row imported last wins.
_UPSERT_SQL = (
    _INSERT_SQL
    + " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _NAMES if name != "id")
    + " WHERE coalesce(julianday(excluded.updated), 0) >= coalesce(julianday(quakes.updated), 0)"
)

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


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the ``quakes`` table and its indexes in ``conn`` unless they exist.

    Runs the statements one by one (not ``executescript``), so a transaction
    the caller has open stays open.
    """
    for stmt in _SCHEMA_STATEMENTS:
        conn.execute(stmt)


# --- import ----------------------------------------------------------------


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
        duplicates = sorted({name for name in names if names.count(name) > 1 and name in _NAMES})
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
            fields=tuple((name, position.get(name), _CONVERTERS.get(name)) for name in _NAMES),
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
    """Open ``path`` for streaming: the binary file (for progress) and a csv reader over it."""
    # utf-8-sig: a byte-order mark (spreadsheet exports) must not become part of "time".
    with open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
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
    """Import ComCat CSV files into the ``quakes`` table of ``db_path`` (created if needed).

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
                    conn.executemany(_UPSERT_SQL, chunk)
                    report.rows_imported += len(chunk)
                    chunk.clear()
                    progress(raw.tell())
            conn.executemany(_UPSERT_SQL, chunk)
            report.rows_imported += len(chunk)
        conn.execute("COMMIT")
    except UnicodeDecodeError as exc:
        conn.execute("ROLLBACK")
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from None
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# --- the synthetic sample -----------------------------------------------------


@dataclass(frozen=True)
class _Region:
    """A state (or part of one) where the sample places events, around real towns."""

    state: str
    box: tuple[float, float, float, float]  # south, north, west, east: events stay inside
    towns: tuple[tuple[str, float, float], ...]
    weight: float  # relative events per year
    years: dict[int, float] = field(default_factory=dict)  # weight overrides, e.g. Oklahoma after 2009
    net: str = "us"

    def weight_in(self, year: int) -> float:
        return self.years.get(year, self.weight)


# Weights follow the real catalogue's shape: California busiest throughout,
# Oklahoma quiet until 2009 and then the busiest of all, a Kansas swarm in
# 2014-15, the Guy-Greenbrier swarm in Arkansas in 2010-11.
_REGIONS = (
    _Region("California", (32.5, 42.0, -124.45, -114.2), (
        ("Ridgecrest", 35.6225, -117.6709), ("Parkfield", 35.8997, -120.4327),
        ("Borrego Springs", 33.2559, -116.3750), ("Ferndale", 40.5760, -124.2639),
        ("The Geysers", 38.7757, -122.7558), ("Coalinga", 36.1397, -120.3601),
        ("Mammoth Lakes", 37.6485, -118.9721), ("Hollister", 36.8525, -121.4016),
        ("Ocotillo", 32.7395, -115.9942), ("Petrolia", 40.3254, -124.2870),
        ("Brawley", 32.9787, -115.5303), ("Anza", 33.5553, -116.6736),
    ), 40.0, net="ci"),
    _Region("Nevada", (35.0, 42.0, -120.0, -114.04), (
        ("Hawthorne", 38.5246, -118.6246), ("Mina", 38.3888, -118.1084), ("Wells", 41.1116, -114.9645),
        ("Dayton", 39.2371, -119.5929), ("Tonopah", 38.0672, -117.2301), ("Beatty", 36.9086, -116.7592),
    ), 8.0, net="nn"),
    _Region("Washington", (45.6, 49.0, -124.7, -117.03), (
        ("Ashford", 46.7590, -122.0326), ("Port Angeles", 48.1181, -123.4307),
        ("Richland", 46.2857, -119.2845), ("Bremerton", 47.5673, -122.6326), ("Entiat", 47.6757, -120.2081),
    ), 7.0, net="uw"),
    _Region("Wyoming", (41.0, 45.0, -111.05, -104.05), (
        ("Green River", 41.5286, -109.4662), ("Lander", 42.8330, -108.7307), ("Cody", 44.5263, -109.0565),
        ("Jackson", 43.4799, -110.7624), ("Rock Springs", 41.5875, -109.2029),
    ), 4.0, net="uu"),
    _Region("Montana", (44.4, 49.0, -116.05, -104.04), (
        ("Lincoln", 46.9549, -112.6817), ("West Yellowstone", 44.6621, -111.1041),
        ("Helena", 46.5891, -112.0391), ("Dillon", 45.2163, -112.6375), ("Polson", 47.6933, -114.1626),
    ), 3.0, net="mb"),
    _Region("Utah", (37.0, 42.0, -114.05, -109.04), (
        ("Magna", 40.7091, -112.1016), ("Price", 39.5994, -110.8107), ("Cedar City", 37.6775, -113.0619),
        ("Helper", 39.6841, -110.8546), ("Richfield", 38.7725, -112.0841),
    ), 2.5, net="uu"),
    _Region("Idaho", (42.0, 49.0, -117.24, -111.04), (
        ("Soda Springs", 42.6544, -111.6047), ("Challis", 44.5046, -114.2317),
        ("Stanley", 44.2163, -114.9381), ("Wallace", 47.4741, -115.9280),
    ), 2.0),
    _Region("Oregon", (42.0, 46.2, -124.6, -116.46), (
        ("Klamath Falls", 42.2249, -121.7817), ("Bandon", 43.1190, -124.4084),
        ("Scotts Mills", 45.0440, -122.6687), ("Maupin", 45.1751, -121.0806),
    ), 1.5, net="uw"),
    _Region("Colorado", (37.0, 41.0, -109.05, -102.04), (
        ("Trinidad", 37.1695, -104.5005), ("Paonia", 38.8683, -107.5920),
        ("Weston", 37.1425, -104.8703), ("Nucla", 38.2683, -108.5484),
    ), 1.0),
    _Region("New Mexico", (31.33, 37.0, -109.05, -103.0), (
        ("Raton", 36.9034, -104.4391), ("Socorro", 34.0584, -106.8914),
        ("Carlsbad", 32.4207, -104.2288), ("Jal", 32.1132, -103.1932),
    ), 1.0),
    _Region("Arizona", (31.33, 37.0, -114.8, -109.05), (
        ("Clarkdale", 34.7711, -112.0579), ("Fredonia", 36.9458, -112.5265),
        ("Black Canyon City", 34.0809, -112.1393), ("Duncan", 32.7237, -109.0967),
    ), 0.6),
    _Region("Texas", (25.85, 36.5, -106.6, -93.5), (
        ("Azle", 32.8957, -97.5459), ("Snyder", 32.7179, -100.9176), ("Alice", 27.7522, -98.0697),
        ("Pecos", 31.4229, -103.4932), ("Timpson", 31.9054, -94.3955), ("Venus", 32.4332, -97.1025),
    ), 0.6, {y: 2.0 for y in range(2008, 2016)}),
    _Region("Oklahoma", (33.62, 37.0, -103.0, -94.43), (
        ("Prague", 35.4867, -96.6850), ("Jones", 35.5651, -97.2867), ("Guthrie", 35.8789, -97.4253),
        ("Cherokee", 36.7545, -98.3565), ("Pawnee", 36.3378, -96.8034), ("Fairview", 36.2689, -98.4798),
        ("Medford", 36.8070, -97.7337), ("Stroud", 35.7487, -96.6581),
    ), 0.5, {2009: 3.0, 2010: 8.0, 2011: 14.0, 2012: 10.0, 2013: 18.0, 2014: 60.0, 2015: 85.0}),
    _Region("Kansas", (37.0, 40.0, -102.05, -94.59), (
        ("Harper", 37.2867, -98.0259), ("Anthony", 37.1534, -98.0312), ("Caldwell", 37.0323, -97.6070),
    ), 0.2, {2014: 8.0, 2015: 12.0}),
    _Region("Arkansas", (33.0, 36.5, -94.62, -89.64), (
        ("Guy", 35.3248, -92.3346), ("Greenbrier", 35.2339, -92.3876),
        ("Blytheville", 35.9273, -89.9190), ("Marked Tree", 35.5329, -90.4207),
    ), 0.4, {2010: 4.0, 2011: 5.0}, net="nm"),
    _Region("Tennessee", (34.98, 36.68, -90.31, -81.65), (
        ("Ridgely", 36.2634, -89.4879), ("Tiptonville", 36.3784, -89.4781), ("Dyersburg", 36.0345, -89.3856),
    ), 0.4, net="nm"),
    _Region("Missouri", (36.0, 40.61, -95.77, -89.1), (
        ("New Madrid", 36.5867, -89.5278), ("Caruthersville", 36.1931, -89.6556),
        ("Portageville", 36.4251, -89.6995),
    ), 0.4, net="nm"),
)
_COMPASS = ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")
_FIRST_YEAR, _LAST_YEAR = 1995, 2015
_EPOCH = datetime.datetime(1970, 1, 1)
_KM_PER_DEGREE = 111.2


def _epoch_ms(year: int) -> int:
    return (datetime.datetime(year, 1, 1) - _EPOCH) // datetime.timedelta(milliseconds=1)


@functools.lru_cache(maxsize=8192)
def _iso_date(day: int) -> str:
    return (_EPOCH + datetime.timedelta(days=day)).date().isoformat()


def _iso_ms(ms: int) -> str:
    """``ms`` since the epoch as ComCat writes times: 2011-11-06T03:53:10.130Z."""
    day, ms = divmod(ms, 86_400_000)  # formatting by hand: datetime's strftime was half the build time
    seconds, milli = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{_iso_date(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{milli:03d}Z"


def _plain_place(region: _Region, lat: float, lon: float) -> str:
    """The region-only place name ComCat gives events far from any town."""
    if region.state == "California":
        part = "Northern" if lat > 38.5 else "Central" if lat > 35.0 else "Southern"
        return f"{part} California"
    if region.state == "Montana":
        return "western Montana" if lon < -110.5 else "eastern Montana"
    if region.state == "Idaho":
        return "northern Idaho" if lat > 46.0 else "southern Idaho"
    return region.state


def _sample_rows(rows: int, seed: int) -> list[tuple]:
    """The sample's rows in :data:`COLUMNS` order, sorted by time.

    Only ``Random.random()`` is drawn from (never ``choice`` or ``randint``,
    whose algorithms Python may change), so a seed gives the same rows on
    every Python version.
    """
    rand = random.Random(seed).random
    years = range(_FIRST_YEAR, _LAST_YEAR + 1)
    starts = [_epoch_ms(y) for y in range(_FIRST_YEAR, _LAST_YEAR + 2)]
    region_cum = [list(itertools.accumulate(r.weight_in(y) for r in _REGIONS)) for y in years]
    year_cum = list(itertools.accumulate(cum[-1] for cum in region_cum))

    moments = []
    for _ in range(rows):
        y = bisect.bisect_right(year_cum, rand() * year_cum[-1])
        moments.append((starts[y] + int(rand() * (starts[y + 1] - starts[y])), y))
    moments.sort()

    def pick(seq):
        return seq[int(rand() * len(seq))]

    def maybe(p_null: float, value):
        return None if rand() < p_null else value

    min_mag_fraction = 10 ** -4.9  # magnitudes stay below 7.9
    latest_update = _epoch_ms(2016) + 270 * 86_400_000
    out = []
    for number, (ms, y) in enumerate(moments, 1):
        year = _FIRST_YEAR + y
        cum = region_cum[y]
        region = _REGIONS[bisect.bisect_right(cum, rand() * cum[-1])]
        town, town_lat, town_lon = pick(region.towns)
        km = 1 + int(rand() * 30)
        sector = int(rand() * 16)
        bearing = math.radians(sector * 22.5 + (rand() - 0.5) * 22.5)
        south, north, west, east = region.box
        lat = round(min(north, max(south, town_lat + km * math.cos(bearing) / _KM_PER_DEGREE)), 4)
        lon = town_lon + km * math.sin(bearing) / (_KM_PER_DEGREE * math.cos(math.radians(town_lat)))
        lon = round(min(east, max(west, lon)), 4)
        plain = rand() < (0.5 if year < 2005 else 0.15)
        place = _plain_place(region, lat, lon) if plain else f"{km}km {_COMPASS[sector]} of {town}, {region.state}"

        # Gutenberg-Richter with b = 1: P(M >= m) = 10 ** -(m - 3).
        mag = 3.0 - math.log10(1.0 - rand() * (1.0 - min_mag_fraction))
        kind = "earthquake"
        if mag < 4.0 and rand() < 0.06:
            kind = "quarry blast" if rand() < 0.4 else "explosion"
        net = region.net
        if net == "ci" and lat > 36.0:
            net = "nc"
        if mag >= 5.0:
            mag_type, mag = "mw", round(mag, 2)
        else:
            mag_type = {"nc": "md", "uw": "md", "nm": "md"}.get(net, "ml")
            if net == "us" and mag >= 4.0:
                mag_type = "mb"
            mag = round(mag, 1)

        if kind != "earthquake":
            depth = round(rand() * 2.0, 2)
        elif net == "us" and year < 2005:
            depth = 5.0 if rand() < 0.5 else 10.0  # fixed depths, as the NEIC used then
        else:  # triangular from 0 to 30 km, most often about 6 km
            u = rand()
            depth = round(30.0 * (math.sqrt(u * 0.2) if u < 0.2 else 1.0 - math.sqrt((1.0 - u) * 0.8)), 2)
        nst = maybe(0.24, 5 + int(rand() * 120))
        gap = maybe(0.15, round(15 + rand() * 285, 1))
        dmin = maybe(0.5, round(rand() ** 2 * 1.5, 4))
        rms = maybe(0.18, round(0.05 + rand() * 1.1, 2))
        updated = min(latest_update, ms + 3_600_000 + int(rand() * 4 * 365 * 86_400_000))
        horizontal_error = maybe(0.45, round(0.1 + rand() * 10, 2))
        depth_error = maybe(0.33, round(0.1 + rand() * 30, 2))
        mag_error = maybe(0.53, round(0.02 + rand() * 0.38, 3))
        mag_nst = maybe(0.33, int(rand() * 200))
        status = "automatic" if year == _LAST_YEAR and rand() < 0.05 else "reviewed"
        out.append((
            _iso_ms(ms), lat, lon, depth, mag, mag_type, nst, gap, dmin, rms, net,
            f"sample{number:06d}", _iso_ms(updated), place, kind,
            horizontal_error, depth_error, mag_error, mag_nst, status, net, net,
        ))
    return out


def build_sample(db_path: str | os.PathLike, *, rows: int = 20_000, seed: int = 1995) -> None:
    """Write a synthetic ``quakes`` table of ``rows`` events to ``db_path``.

    The events are plausible, not real: ids ``sample000001`` upwards in time
    order, times from 1995-01-01 to 2015-12-31 (ISO-8601 UTC with ``Z``),
    magnitudes from 3.0 following Gutenberg-Richter with b = 1, places in
    ComCat's style ("12km SW of Guthrie, Oklahoma" or just "Nevada") in
    the seismically active states of the contiguous U.S., and the real
    catalogue's shape over time (Oklahoma quiet until 2009, then busy). The
    same ``rows`` and ``seed`` always give the same rows.

    An existing ``quakes`` table in ``db_path`` is replaced; other tables are
    left alone. ``PRAGMA user_version`` is set to :data:`SAMPLE_VERSION`.

    Raises:
        ValueError: ``rows`` is negative.
        sqlite3.Error: the database cannot be written.
    """
    if rows < 0:
        raise ValueError("rows must be 0 or more")
    data = _sample_rows(rows, seed)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("DROP TABLE IF EXISTS quakes")
        create_schema(conn)
        conn.executemany(_INSERT_SQL, data)
        conn.execute(f"PRAGMA user_version = {SAMPLE_VERSION}")
        conn.execute(f"PRAGMA application_id = {_SAMPLE_APPLICATION_ID}")
        conn.execute("COMMIT")
    finally:
        conn.close()


def sample_path() -> pathlib.Path:
    """Where :func:`ensure_sample` keeps the sample catalogue.

    ``$TRIONET_SAMPLE_DB`` when set, else
    ``$XDG_CACHE_HOME/trionet/sample-quakes-v1.sqlite``, with
    ``XDG_CACHE_HOME`` defaulting to ``~/.cache`` (a relative value is
    ignored, as the XDG spec says).
    """
    override = os.environ.get("TRIONET_SAMPLE_DB")
    if override:
        return pathlib.Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(cache) if os.path.isabs(cache) else pathlib.Path.home() / ".cache"
    return base / "trionet" / "sample-quakes-v1.sqlite"


def _sample_state(path: pathlib.Path) -> str:
    """``missing``, ``current``, ``stale`` (an older sample), ``foreign`` or ``unreadable``."""
    try:
        if path.stat().st_size == 0:
            return "missing"
    except FileNotFoundError:
        return "missing"
    try:
        with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'quakes'"
            ).fetchone()
    except sqlite3.DatabaseError:
        return "unreadable"
    if app_id != _SAMPLE_APPLICATION_ID:
        return "foreign"
    return "current" if version == SAMPLE_VERSION and has_table else "stale"


def ensure_sample(path: pathlib.Path | None = None) -> pathlib.Path:
    """Return the path of a sample catalogue, building it first if needed.

    Args:
        path: where the sample lives; :func:`sample_path` when None.

    The sample is built (with :func:`build_sample`'s defaults) when the file
    is missing or was built by another generator version. It is written to
    a temporary file beside the target and moved into place with
    ``os.replace``, so a reader never sees half a database and two processes
    building at once both end with a whole one.

    Error handling:
        A database that is not a sample is never overwritten when its path
        was given (as ``path`` or ``$TRIONET_SAMPLE_DB``): it is returned as
        it is, so the variable can point at a real imported catalogue. At the
        default cache path, such a file (or a corrupt one) is rebuilt.

    Raises:
        ValueError: a given path holds a file that is not an SQLite database.
        OSError: the directory cannot be created or written.
    """
    chosen = path is not None or bool(os.environ.get("TRIONET_SAMPLE_DB"))
    target = pathlib.Path(path) if path is not None else sample_path()
    state = _sample_state(target)
    if state == "current" or (state == "foreign" and chosen):
        return target
    if state == "unreadable" and chosen:
        raise ValueError(f"{target} exists and is not an SQLite database; remove it or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        build_sample(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


# --- download ----------------------------------------------------------------


class _TooMany(Exception):
    """The service refused a window: it matches more events than one query may return."""


_TIMEOUT = 120.0  # seconds to wait on the service for one response
_RETRY_DELAYS = (2.0, 10.0)  # seconds before the 2nd and 3rd attempts at a window
_FIRST_WINDOW = datetime.timedelta(days=365)
_SMALLEST_WINDOW = datetime.timedelta(seconds=1)
_USER_AGENT = "trionet-catalog/1 (python urllib)"


def _fdsn_time(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _get_window(url: str, params: dict[str, str]) -> tuple[list[str] | None, list[list[str]]]:
    """Fetch one window: its CSV header (None when it has no events) and its records.

    The whole window is read before anything is written, so a retry after a
    broken download cannot duplicate rows. A window holds at most
    ``_SERVICE_LIMIT`` events (a few MB).

    Raises:
        _TooMany: the service says the window has too many events.
        urllib.error.URLError, OSError, http.client.HTTPException: the request failed.
    """
    request = urllib.request.Request(
        f"{url}?{urllib.parse.urlencode(params)}", headers={"User-Agent": _USER_AGENT}
    )
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            body = exc.read(4096).decode("utf-8", "replace")
        if exc.code == 400 and "limit" in body.lower():
            raise _TooMany(body) from None
        message = f"{exc.reason}: {body.strip()[:300]}"
        raise urllib.error.HTTPError(exc.url, exc.code, message, exc.headers, None) from None
    with response:
        if response.status == 204:  # FDSN: no events match
            return None, []
        rows = [row for row in csv.reader(io.TextIOWrapper(response, encoding="utf-8", newline="")) if row]
    if not rows:
        return None, []
    return rows[0], rows[1:]


def _get_window_with_retries(url: str, params: dict[str, str]) -> tuple[list[str] | None, list[list[str]]]:
    for delay in (*_RETRY_DELAYS, None):
        try:
            return _get_window(url, params)
        except urllib.error.HTTPError as exc:
            if delay is None or not (exc.code == 429 or exc.code >= 500):
                raise
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError):
            if delay is None:
                raise
        time.sleep(delay)
    raise AssertionError("unreachable")


def fetch_usgs(
    dest: str | os.PathLike,
    *,
    start: datetime.date,
    end: datetime.date,
    min_magnitude: float = 3.0,
    url: str = USGS_URL,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Download the contiguous-U.S. events from ``start`` through ``end`` as one ComCat CSV file.

    Queries the USGS FDSN event service (``format=csv``,
    ``orderby=time-asc``, latitude 24.6 to 50, longitude -125 to -65) one
    time window at a time. The service refuses a query matching more than
    20,000 events, so a refused window is halved and asked again; windows
    grow back when they come back small. Windows are half-open at the
    millisecond (ComCat's time resolution), so no event is fetched twice.

    Args:
        dest: the CSV file to write: one header line, then the events in
            time order. Written to ``dest.part`` and renamed at the end, so
            ``dest`` is never half written.
        start: the first day (UTC).
        end: the last day (UTC), included.
        min_magnitude: the smallest magnitude fetched.
        url: the service's query URL (tests point it at a local server).
        progress: called after each window as ``progress(seconds_done,
            seconds_total)``: how much of the time range has been fetched.

    Returns:
        The number of events written.

    Raises:
        ValueError: ``end`` is before ``start``, or the service's answers
            do not fit together (different headers).
        urllib.error.URLError: the service cannot be reached, or answered
            with an error (an ``HTTPError``, carrying its message).

    Error handling:
        A window that fails with a network error, a timeout, HTTP 429 or a
        5xx is tried three times in all, with a pause between tries.
    """
    if end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    begin = datetime.datetime.combine(start, datetime.time())
    finish = datetime.datetime.combine(end + datetime.timedelta(days=1), datetime.time())
    total = int((finish - begin).total_seconds())
    dest = pathlib.Path(dest)
    part = dest.with_name(dest.name + ".part")
    header: list[str] | None = None
    count = 0
    try:
        with open(part, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            window = _FIRST_WINDOW
            cursor = begin
            while cursor < finish:
                stop = min(cursor + window, finish)
                params = {
                    "format": "csv",
                    "orderby": "time-asc",
                    "starttime": _fdsn_time(cursor),
                    "endtime": _fdsn_time(stop - datetime.timedelta(milliseconds=1)),
                    "minmagnitude": repr(float(min_magnitude)),
                    **_CONTIGUOUS_US,
                }
                try:
                    window_header, rows = _get_window_with_retries(url, params)
                except _TooMany:
                    window = (stop - cursor) / 2
                    if window < _SMALLEST_WINDOW:
                        raise ValueError(
                            f"more than {_SERVICE_LIMIT} events from {params['starttime']} to "
                            f"{params['endtime']}: the service cannot return them"
                        ) from None
                    window = datetime.timedelta(milliseconds=window // datetime.timedelta(milliseconds=1))
                    continue
                if window_header is not None:
                    if header is None:
                        header = window_header
                        writer.writerow(header)
                    elif window_header != header:
                        raise ValueError(
                            f"the service changed its CSV columns between windows: {header} then {window_header}"
                        )
                    writer.writerows(rows)
                    count += len(rows)
                if len(rows) < _SERVICE_LIMIT // 4 and window < _FIRST_WINDOW:
                    window = min(window * 2, _FIRST_WINDOW)
                cursor = stop
                if progress is not None:
                    progress(int((cursor - begin).total_seconds()), total)
            if header is None:  # no events at all: still a valid, empty catalogue
                writer.writerow(_NAMES)
        os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return count
