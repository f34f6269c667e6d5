"""``trionet sql``: one server owns an SQLite database; any number of clients send SQL.

The public API: :func:`connect` and :class:`SqlError` for clients,
:class:`Database`, :class:`SqlServer` and :func:`serve_sql` for servers.
"""

from trionet.sql.client import (
    Result,
    SqlConnection,
    SqlConnectionError,
    StreamingResult,
    connect,
)
from trionet.sql.engine import Database
from trionet.sql.errors import SqlError
from trionet.sql.server import SqlServer, SqlServerConfig, serve_sql

__all__ = [
    "Database",
    "Result",
    "SqlConnection",
    "SqlConnectionError",
    "SqlError",
    "SqlServer",
    "SqlServerConfig",
    "StreamingResult",
    "connect",
    "serve_sql",
]
