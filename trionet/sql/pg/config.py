"""The PostgreSQL front's limits: one frozen dataclass, every field a future ``trionet sql serve`` option."""

from __future__ import annotations

import os
from dataclasses import dataclass

from trionet.sql.engine import DEFAULT_BATCH_BYTES
from trionet.sql.pg.protocol import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["DEFAULT_PG_PORT", "DEFAULT_STATEMENT_THREADS", "PgConfig"]

DEFAULT_PG_PORT = 7432
"""The PostgreSQL front's default port (PostgreSQL's own 5432, moved out of its way)."""
DEFAULT_STATEMENT_THREADS = max(2, os.cpu_count() or 2)
"""Worker threads running statements at once: one per core (at least 2), as the NDJSON server."""


@dataclass(frozen=True)
class PgConfig:
    """The PostgreSQL front's limits (the NDJSON server's, where they mean the same).

    Attributes:
        query_timeout: seconds SQLite may work on one statement; 0 for none.
        send_timeout: a client that leaves our writes unread this long is dropped.
        max_rows: the most rows one result may have (past it: error 54000); 0 for no cap.
        max_message_bytes: the largest frontend message (past it: FATAL 08P01, close).
        batch_rows: rows fetched from SQLite per step.
        max_batch_bytes: a step ends early once its values hold about this many bytes.
        max_threads: worker threads running statements at once.
        max_connections: clients at once; the one over it gets FATAL 53300.
        max_prepared: named statements plus portals one connection may hold.
        max_query_statements: statements one simple Query may hold (past it: 54000).
        startup_timeout: seconds a new connection has to finish its startup.
        idle_timeout: seconds a connection may stay silent; 0 for ever.
        idle_transaction_timeout: the same inside a transaction block; 0 for ever.
    """

    query_timeout: float = 30.0
    send_timeout: float = 60.0
    max_rows: int = 100_000
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    batch_rows: int = 256
    max_batch_bytes: int = DEFAULT_BATCH_BYTES
    max_threads: int = DEFAULT_STATEMENT_THREADS
    max_connections: int = 1000
    max_prepared: int = 1000
    max_query_statements: int = 1000
    startup_timeout: float = 10.0
    idle_timeout: float = 300.0
    idle_transaction_timeout: float = 60.0
