"""The catalogue trionet ships: the USGS CSV, xz-compressed, and the database built from it on first use.

The package carries ``data/usgs-quakes-lower-us.csv.xz``: the USGS ComCat
export of M3.0+ events in the contiguous U.S., 1995-2015 (public domain,
16,941 rows, 0.6 MB compressed). ``trionet sql serve`` without ``--db`` serves
a database imported from it, kept in the user's cache directory.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import pathlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterator

from trionet.sql.catalog.importer import ImportReport, import_usgs

__all__ = ["CATALOG_VERSION", "SHIPPED_ROWS", "build_catalogue", "catalogue_path", "ensure_catalogue", "shipped_csv"]

SHIPPED_ROWS = 16_941
"""Events in the shipped CSV (and rows in the database built from it)."""

CATALOG_VERSION = 1
"""Stored as ``PRAGMA user_version`` in a database built by :func:`build_catalogue`.

Bump it whenever the shipped CSV or the schema changes, so that
:func:`ensure_catalogue` rebuilds the caches built from the older copy.
"""

_CSV_NAME = "usgs-quakes-lower-us.csv.xz"
# PRAGMA application_id of a database we built ("TQKC"): tells our cache from a user's database.
_APPLICATION_ID = 0x54514B43


@contextlib.contextmanager
def shipped_csv() -> Iterator[pathlib.Path]:
    """Yield the path of the shipped ``.csv.xz`` (a temporary copy if the package is zipped)."""
    resource = importlib.resources.files(__package__) / "data" / _CSV_NAME
    with importlib.resources.as_file(resource) as path:
        yield path


def build_catalogue(db_path: str | os.PathLike, *, progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import the shipped CSV into ``db_path`` and stamp it as ours (application id, version).

    Raises:
        ValueError: the shipped copy does not import cleanly (a damaged installation).
        OSError, sqlite3.Error: the database cannot be written.
    """
    with shipped_csv() as csv_path:
        report = import_usgs([csv_path], db_path, progress=progress)
    if report.bad_rows or report.rows_imported != SHIPPED_ROWS:
        raise ValueError(
            f"the shipped catalogue is damaged: {report.rows_imported} of {SHIPPED_ROWS} rows imported"
            + (f", first bad row {report.bad_rows[0]}" if report.bad_rows else "")
            + "; reinstall trionet"
        )
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA user_version = {CATALOG_VERSION}")
        conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
    return report


def catalogue_path() -> pathlib.Path:
    """Where :func:`ensure_catalogue` keeps the database.

    ``$TRIONET_CATALOG_DB`` when set, else
    ``$XDG_CACHE_HOME/trionet/usgs-quakes-v1.sqlite``, with ``XDG_CACHE_HOME``
    defaulting to ``~/.cache`` (a relative value is ignored, as the XDG spec says).
    """
    override = os.environ.get("TRIONET_CATALOG_DB")
    if override:
        return pathlib.Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(cache) if os.path.isabs(cache) else pathlib.Path.home() / ".cache"
    return base / "trionet" / f"usgs-quakes-v{CATALOG_VERSION}.sqlite"


def _state(path: pathlib.Path) -> str:
    """``missing``, ``current``, ``stale`` (built from an older copy), ``foreign`` or ``unreadable``."""
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
    if app_id != _APPLICATION_ID:
        return "foreign"
    return "current" if version == CATALOG_VERSION and has_table else "stale"


def ensure_catalogue(
    path: pathlib.Path | None = None, *, progress: Callable[[int, int], None] | None = None
) -> pathlib.Path:
    """Return the path of the catalogue database, building it from the shipped CSV first if needed.

    Args:
        path: where the database lives; :func:`catalogue_path` when None.
        progress: passed to :func:`import_usgs` when a build happens.

    The database is built when the file is missing or was built from an
    older shipped copy. It is written to a temporary file beside the target
    and moved into place with ``os.replace``, so a reader never sees half a
    database and two processes building at once both end with a whole one.

    Error handling:
        A database we did not build is never overwritten when its path was
        given (as ``path`` or ``$TRIONET_CATALOG_DB``): it is returned as it
        is, so the variable can point at a catalogue the user imported. At the
        default cache path, such a file (or a corrupt one) is rebuilt.

    Raises:
        ValueError: a given path holds a file that is not an SQLite database,
            or the shipped copy is damaged.
        OSError: the directory cannot be created or written.
    """
    chosen = path is not None or bool(os.environ.get("TRIONET_CATALOG_DB"))
    target = pathlib.Path(path) if path is not None else catalogue_path()
    state = _state(target)
    if state == "current" or (state == "foreign" and chosen):
        return target
    if state == "unreadable" and chosen:
        raise ValueError(f"{target} exists and is not an SQLite database; remove it or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        build_catalogue(tmp, progress=progress)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target
