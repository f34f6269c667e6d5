"""The database the SQL server owns: its file, its limits, and the sessions it opens.

A :class:`Database` checks the file at start-up (switching a read-write one
to WAL; its sessions write with ``synchronous=FULL``), holds the limits every session applies,
and remembers which SQL texts the authorizer saw only read, for
:meth:`Database.may_run_inline`. Each client gets a
:class:`~trionet.sql.session.Session` (one ``sqlite3.Connection``).

The safety rules live in SQLite's own hooks, not in string matching:

- the authorizer is an allow-list (:mod:`trionet.sql.sandbox`): it allows
  the statements, functions, table-valued functions and PRAGMAs a read-only
  analyst needs, no virtual-table module, writes to the main database on a
  read-write server only, and refuses the rest: ATTACH and DETACH (so
  ``VACUUM INTO``), ``load_extension``, ``fts3_tokenizer`` and every other
  function that takes or leaks a pointer;
- ``printf``, ``instr``, ``replace`` and ``trim`` are replaced by versions
  that cannot keep SQLite busy for seconds inside one VM step, and LIKE/GLOB
  patterns are short;
- the server interrupts a statement (``sqlite3_interrupt``) at its deadline,
  when its client leaves, or at shutdown; a statement tried on the event loop
  is also bounded by a progress handler counting VM instructions;
- ``sqlite3_limit`` caps strings, blobs and SQL text, and forbids attached
  databases outright; ``PRAGMA temp.max_page_count`` caps temporary storage.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from trionet.sql.errors import SqlError
from trionet.sql.session import (
    DEFAULT_BATCH_BYTES,
    INLINE_BUDGET,
    FetchResult,
    OverBudget,
    Session,
)

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "INLINE_BUDGET",
    "Database",
    "FetchResult",
    "OverBudget",
    "Session",
    "limit_sqlite_memory",
]

_CLASSIFIED_MAX = 4096  # SQL texts whose read-only verdict a Database remembers
# A partial index, or a literal after a comparison in an index's text (an
# index on "a = 5"): where SQLite's planner matches a query's literal, which a
# bound parameter in its place does not match. Errs on the side of yes.
_VALUE_INDEX = re.compile(r"\bWHERE\b|(?:=|<>|<|>)\s*['0-9]", re.IGNORECASE)


def limit_sqlite_memory(max_bytes: int) -> None:
    """Cap the memory SQLite may allocate in this whole process (``PRAGMA hard_heap_limit``).

    A statement that needs more fails with ``out_of_memory``: the one bound
    on a single result row, whose values (up to 2000 columns of
    max_value_bytes each) SQLite builds before Python sees any of them.
    Shared by every connection of the process; 0 removes the cap.
    """
    probe = sqlite3.connect(":memory:")
    try:
        probe.execute(f"PRAGMA hard_heap_limit = {int(max_bytes)}")
    finally:
        probe.close()

def _in_wal_mode(path: Path) -> bool:
    """Whether the SQLite file at ``path`` is in WAL mode (its header's read and write versions are 2)."""
    try:
        with open(path, "rb") as file:
            header = file.read(20)
    except OSError:
        return False  # the session that opens it says what is wrong
    return len(header) == 20 and header[18:20] == b"\x02\x02"


class Database:
    """The database file the server owns, and the limits its sessions apply.

    Args:
        path: the SQLite file. It must exist unless ``read_write``.
        read_write: allow writes; the database is switched to WAL mode.
        max_value_bytes: the largest string or blob a statement may build.
        max_sql_bytes: the longest SQL text accepted.
        max_temp_bytes: the most a session's temporary tables and indexes may
            hold (``PRAGMA temp.max_page_count``).
        max_like_pattern_bytes: the longest LIKE or GLOB pattern. SQLite
            matches in one VM step, in time about value length x pattern
            length (a 16 MiB value and a 50-byte pattern: about 1 s here).
        max_row_bytes: the largest result row (its values as sent, blobs in
            base64), refused with ``too_big`` before it is encoded.
        busy_timeout: seconds a writer waits for another writer's lock.
        external_writes: read-only only: let other processes write the file
            while sessions are open. Without it (the default) each read-only
            session holds SQLite's shared lock from its first read until it
            closes (``PRAGMA locking_mode=EXCLUSIVE``, which on a read-only
            connection takes only the shared lock): SQLite then skips, on
            every statement, the lock and unlock calls, the hot-journal check
            and the re-read of the file header that tell it whether another
            process changed the file (8 of the 11 system calls of a point query,
            docs/benchmarks.md), and pages are read through a memory map
            instead of a pread each. Readers, other sessions and other workers
            are not held back; a process that writes the file meanwhile gets
            "database is locked". A file in WAL mode is always read with
            per-statement locks (an exclusive-mode WAL reader would keep
            every other process out).

    Attributes:
        holds_read_lock: whether sessions hold the shared lock (see ``external_writes``).
        value_indexes: at start, the schema had a partial index or an index
            whose text compares with a literal: a query's literal may then
            let SQLite use an index that a bound parameter in its place would
            not (same rows, perhaps in another order), so the PostgreSQL
            port does not bind a simple Query's literals
            (:mod:`trionet.sql.pg.literals`).

    Raises:
        SqlError: the file is missing, or is not an SQLite database.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        read_write: bool = False,
        max_value_bytes: int = 16 << 20,
        max_sql_bytes: int = 1 << 20,
        max_temp_bytes: int = 64 << 20,
        max_like_pattern_bytes: int = 50,
        max_row_bytes: int = 32 << 20,
        busy_timeout: float = 5.0,
        external_writes: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_write = read_write
        self.holds_read_lock = not read_write and not external_writes and not _in_wal_mode(self.path)
        self.max_value_bytes = max_value_bytes
        self.max_sql_bytes = max_sql_bytes
        self.max_temp_bytes = max_temp_bytes
        self.max_like_pattern_bytes = max_like_pattern_bytes
        self.max_row_bytes = max_row_bytes
        self.busy_timeout = busy_timeout
        probe = sqlite3.connect(":memory:")
        try:
            # Every module SQLite was built with: a READ of one of these names
            # is a table-valued function, judged against ALLOWED_TABLE_FUNCTIONS.
            self.modules = frozenset(row[0] for row in probe.execute("PRAGMA module_list"))
        finally:
            probe.close()
        self._read_only_sql: dict[str, bool] = {}
        if not read_write and not self.path.is_file():
            raise SqlError("sql_error", f"no database at {self.path}")
        try:
            if read_write:
                # WAL lets readers go on while one writer writes; it is a
                # property of the file, so it is set once, before any session.
                setup = sqlite3.connect(self.path, timeout=busy_timeout)
                try:
                    setup.execute("PRAGMA journal_mode=WAL")
                finally:
                    setup.close()
            # Open a session now so that a bad file fails at start-up, not on the first client.
            session = self.open_session()
            try:
                session.connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()
                # Read once, at start: the schema of a read-only server stays as it is.
                self.value_indexes = any(
                    _VALUE_INDEX.search(sql)
                    for (sql,) in session.connection.execute(
                        "SELECT sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"
                    )
                )
            finally:
                session.close()
        except sqlite3.DatabaseError as exc:
            raise SqlError("sql_error", f"{self.path}: {exc}") from None

    def open_session(self) -> "Session":
        """Open a new SQLite connection with the safety rules installed."""
        return Session(self)

    def may_run_inline(self, sql: str) -> bool:
        """True when ``sql`` is known to only read, and to call only cheap functions, so it may be tried on the event loop.

        The verdict comes from the authorizer the first time the statement was
        prepared (in a worker thread). Only a read-only server runs anything
        inline: with writers about, even a read may wait on a lock. A
        function call is one VM instruction however long it runs, so only
        statements whose functions are all cheap (:func:`~trionet.sql.sandbox.cheap_call`) qualify.
        """
        return not self.read_write and self._read_only_sql.get(sql, False)

    def inline_verdict(self, sql: str) -> bool | None:
        """:meth:`may_run_inline`, or None when ``sql`` was not seen yet (it may be tried with ``trial``).

        See :meth:`Session.execute`: a trial lets the authorizer refuse the
        statement while it is prepared, before it runs, if it is not fit
        for the event loop.
        """
        if self.read_write:
            return False
        return self._read_only_sql.get(sql)

    def _remember(self, sql: str, read_only: bool) -> None:
        if len(self._read_only_sql) >= _CLASSIFIED_MAX:
            self._read_only_sql.clear()
        self._read_only_sql[sql] = read_only

