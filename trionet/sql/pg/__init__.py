"""trionet's SQL server speaking PostgreSQL's frontend/backend protocol v3 (issue 12).

``serve_pg(database, host, port)`` serves the same SQLite database as
``trionet sql serve`` to psql, psycopg and other PostgreSQL clients. SQL is
SQLite's dialect; docs/protocol/pg.md says what of PostgreSQL is emulated.
"""

from trionet.sql.pg.config import DEFAULT_PG_PORT, PgConfig
from trionet.sql.pg.server import PgServer, serve_pg

__all__ = ["DEFAULT_PG_PORT", "PgConfig", "PgServer", "serve_pg"]
