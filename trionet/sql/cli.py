"""``trionet sql`` commands: serve, query, shell, import-usgs, fetch-usgs."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import trio
from rich.console import Console

from trionet.addresses import is_loopback
from trionet.cliutil import (
    count_option,
    describe_os_error,
    distinct_ports,
    grace_option,
    host_option,
    log_level_option,
    metrics_option,
    port_option,
    seconds_option,
    serve_until_signal,
)
from trionet.log import get_logger
from trionet.serving import DEFAULT_BUSY_POLL, POLL_MOST_PARKED
from trionet.sql import auth, protocol
from trionet.sql.client import SqlConnectionError, connect
from trionet.sql.engine import DEFAULT_BATCH_BYTES, Database, limit_sqlite_memory
from trionet.sql.errors import SqlError
from trionet.sql.metrics import sql_registry
from trionet.sql.pg.config import DEFAULT_PG_PORT as PG_DEFAULT_PORT
from trionet.sql.pg.config import PgConfig
from trionet.sql.pg.server import PgServer
from trionet.sql.render import (
    FORMATS,
    changed_line,
    format_result,
    row_count,
    truncation_notice,
)
from trionet.sql.server import DEFAULT_STATEMENT_THREADS, SqlServer, SqlServerConfig
from trionet.sql.workers import serve_workers, share
from trionet.tls import client_tls_options, server_tls_options
from trionet.workers import resolve_workers

__all__ = [
    "check_open_access",
    "connection_hint",
    "default_max_connections",
    "load_auth",
    "parse_param",
    "raise_open_files_limit",
    "read_password",
    "sql",
]

log = get_logger("sql")

_RESERVED_FDS = 32  # listeners, logs, the database checks at start, a margin
_MAX_CONNECTIONS_CAP = 1000


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open descriptors to its hard limit; return the new soft limit.

    Where the limit cannot be read or raised (no ``resource`` module, a
    container that forbids it), the current soft limit is returned, or 1024
    if even that is unknown. (Here rather than in cliutil while only the SQL
    server sizes a cap from it.)
    """
    try:
        import resource
    except ImportError:  # not on Unix
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_max_connections(open_files: int, read_write: bool) -> int:
    """The connection cap the descriptor limit allows.

    A read-only connection holds up to 3 descriptors (its socket, the
    database file, a temporary file); a read-write one up to 5 (plus the
    WAL and its shared-memory index). The cap is at most 1000 whatever the
    limit: each connection may also hold a page cache and --max-temp-bytes.
    """
    per_connection = 5 if read_write else 3
    return max(1, min(_MAX_CONNECTIONS_CAP, (open_files - _RESERVED_FDS) // per_connection))


def _parse_workers(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return resolve_workers(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def sql() -> None:
    """An SQL server over SQLite, and its clients.

    \b
    One server owns the database; any number of clients connect over TCP and
    send SQL. By default it serves the USGS catalogue of M3.0+ earthquakes in
    the contiguous U.S., 1995-2015, which ships with trionet:
      trionet sql serve                      # the shipped catalogue, read-only
      trionet sql query "SELECT count(*) FROM quakes"
      trionet sql shell
      trionet sql import-usgs --db quakes.sqlite   # your own copy, to write to
      trionet sql serve --db quakes.sqlite --read-write
    """


@sql.command()
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help=(
        "SQLite file to serve. Without it the server serves the USGS earthquake catalogue that ships "
        "with trionet (16,941 events, table 'quakes'), imported on first use into "
        "~/.cache/trionet/ (or $TRIONET_CATALOG_DB)."
    ),
)
@host_option(serving=True)
@port_option(protocol.DEFAULT_PORT, serving=True)
@click.option(
    "--read-write",
    is_flag=True,
    help="Allow writes (the database switches to WAL mode). Without it every write is refused with 'read_only'.",
)
@click.option(
    "--allow-external-writes",
    "external_writes",
    is_flag=True,
    help="Read-only server: let other processes write the database file while clients are connected. "
    "Without it each client's session holds SQLite's shared lock, which spares SQLite 8 system calls per "
    "statement (its check for changes made by others), and a process that writes the file meanwhile gets "
    "'database is locked'. To change the data live, serve it --read-write. (Files in WAL mode: always allowed.)",
)
@seconds_option(
    "--query-timeout",
    default=30.0,
    help="Interrupt a statement once SQLite has worked on it this long (waiting for a slow client "
    "to read its rows does not count); 0 for no limit.",
)
@count_option(
    "--max-rows",
    default=100_000,
    unit="N",
    help="Cut a result after N rows and mark it truncated; 0 for no cap.",
)
@click.option(
    "--max-request-bytes",
    type=click.IntRange(64),
    default=protocol.DEFAULT_MAX_REQUEST_BYTES,
    show_default=True,
    metavar="BYTES",
    help="Longest request line accepted; a longer one is answered with 'request_too_large'.",
)
@click.option(
    "--max-value-bytes",
    type=click.IntRange(1024),
    default=16 << 20,
    show_default=True,
    metavar="BYTES",
    help="Largest string or blob a statement may build (SQLITE_LIMIT_LENGTH); past it the answer is 'too_big'.",
)
@click.option(
    "--max-temp-bytes",
    type=click.IntRange(65536),
    default=64 << 20,
    show_default=True,
    metavar="BYTES",
    help="Most a connection's temporary tables and indexes may hold; past it the answer is 'full'.",
)
@count_option(
    "--max-like-pattern-bytes",
    default=50,
    unit="BYTES",
    minimum=2,
    help="Longest LIKE or GLOB pattern ('too_big' past it): SQLite matches in time value length x pattern "
    "length, where the query timeout cannot interrupt it.",
)
@click.option(
    "--max-sqlite-memory-bytes",
    type=click.IntRange(0),
    default=1 << 30,
    show_default=True,
    metavar="BYTES",
    help="Memory SQLite may use in the whole server (page caches, sorting, the values of a result row); "
    "a statement that needs more is answered 'out_of_memory'. 0 for no cap.",
)
@click.option(
    "--max-row-bytes",
    type=click.IntRange(1024),
    default=32 << 20,
    show_default=True,
    metavar="BYTES",
    help="Largest result row (its values as sent, blobs in base64); a larger one is answered 'too_big'.",
)
@count_option(
    "--max-batch-bytes",
    default=DEFAULT_BATCH_BYTES,
    unit="BYTES",
    minimum=1024,
    help="End a 'rows' frame once its values hold about this many bytes (with at most 256 rows), "
    "so the server holds about this much per connection, plus one row.",
)
@count_option(
    "--query-threads",
    default=DEFAULT_STATEMENT_THREADS,
    unit="N",
    minimum=1,
    help="Statements running at once (default: one per core); the rest wait their turn. "
    "Greeting and closing connections never wait for these.",
)
@count_option(
    "--max-connections",
    default=None,
    unit="N",
    minimum=1,
    help="Clients at once; the one over it gets a 'bye' with code 'busy' instead of 'hello'. "
    "[default: what the descriptor limit allows (3 per connection, 5 with --read-write), at most 1000; "
    "the server raises its soft limit to the hard limit at start]",
)
@seconds_option(
    "--idle-timeout",
    default=300.0,
    help="Close a connection that sends no request for this long, with a 'bye' with code 'idle'; 0 for never.",
)
@seconds_option(
    "--idle-transaction-timeout",
    default=60.0,
    help="Roll back and close a connection idle this long inside a transaction (it may hold the write lock), "
    "with a 'bye' with code 'idle_transaction'; 0 for never.",
)
@click.option(
    "--pg-port",
    type=click.IntRange(0, 65535),
    default=PG_DEFAULT_PORT,
    show_default=True,
    metavar="PORT",
    help="Also serve PostgreSQL clients (psql, psycopg, ...) on this TCP port; 0 picks a free one.",
)
@click.option("--no-pg", is_flag=True, help="Do not listen for PostgreSQL clients.")
@click.option(
    "--busy-poll-us",
    type=click.IntRange(0, 10_000),
    default=round(DEFAULT_BUSY_POLL * 1e6),
    show_default=True,
    metavar="MICROSECONDS",
    help="After answering, look for the next request for up to this long before sleeping, while clients "
    f"have been sending again that soon and at most {POLL_MOST_PARKED} connections wait (Linux's halt-polling rule): a client "
    "querying back to back is answered sooner, without a wake-up between two requests. Idle or slow clients "
    "make it stop; 0 never looks.",
)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    metavar="N|auto",
    callback=_parse_workers,
    help="Serve from N processes (auto: one per core) sharing both ports, so N cores answer queries; "
    "a supervisor restarts a worker that dies. --query-threads, --max-sqlite-memory-bytes and an explicit "
    "--max-connections are then totals, shared equally by the workers, and --metrics shows every worker's "
    "figures labelled worker=\"N\" (docs/protocol/sql.md).",
)
@click.option(
    "--placement",
    type=click.Choice(["cpu", "hash"]),
    default="cpu",
    show_default=True,
    help="With --workers above 1, which worker serves a connection. cpu: a PostgreSQL connection whose client has "
    "been running for a second moves to the worker for the CPU its client thread runs on, when the client's threads "
    "are on CPUs of their own and the workers stay even, so each thread of a many-threaded client on this machine "
    "talks to one worker (faster). It moves between two exchanges with its whole session (settings, prepared "
    "statements, cancel key); TLS connections and the NDJSON port's stay. hash: every connection stays where the "
    "kernel's SO_REUSEPORT hash put it (docs/protocol/pg.md).",
)
@click.option(
    "--users",
    "users_path",
    metavar="FILE",
    help="Ask every client for a user and password (SCRAM-SHA-256 on both ports; the password never crosses "
    "the wire). One user a line: NAME:SCRAM-SHA-256$... (make one with 'trionet sql passwd NAME') or "
    "NAME:PASSWORD; '#' starts a comment. Without it the server trusts every client.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Listen on a non-loopback --host without --users: anyone who can reach the ports can then read "
    "(and with --read-write, change) the database. Without this flag such a server refuses to start.",
)
@seconds_option(
    "--auth-timeout",
    default=auth.DEFAULT_AUTH_TIMEOUT,
    minimum=0.001,
    help="With --users, a client has this long to log in (NDJSON port; the PostgreSQL port's whole "
    "startup has this long too), then it is dropped.",
)
@seconds_option(
    "--auth-failure-delay",
    default=auth.DEFAULT_AUTH_FAILURE_DELAY,
    help="Wait this long before answering a wrong password or unknown user, then close: guessing one "
    "connection after another is slow. Only that connection waits.",
)
@server_tls_options
@grace_option
@metrics_option
@log_level_option
def serve(
    db, host, port, read_write, external_writes, query_timeout, max_rows, max_request_bytes, max_value_bytes, max_temp_bytes,
    max_like_pattern_bytes, max_sqlite_memory_bytes, max_row_bytes, max_batch_bytes, query_threads, max_connections,
    idle_timeout, idle_transaction_timeout, pg_port, no_pg, busy_poll_us, workers, placement, users_path, insecure_no_auth,
    auth_timeout, auth_failure_delay, tls, grace, metrics,
) -> None:
    """Serve an SQLite database to any number of clients over TCP.

    \b
    Two protocols, one database and one set of limits:
    - on --port, trionet's own: one JSON object (or one plain SQL line) per
      line (docs/protocol/sql.md). Try it by hand:
        nc 127.0.0.1 7401
        SELECT count(*) FROM quakes
    - on --pg-port, PostgreSQL's (docs/protocol/pg.md), for psql, psycopg
      and the tools built on them. SQL is SQLite's dialect either way:
        psql -h 127.0.0.1 -p 7432 -c "SELECT count(*) FROM quakes"

    Stop with Ctrl-C or SIGTERM: the server stops accepting, lets running
    queries finish within --grace seconds (interrupting them shortly before
    its end), says 'bye' to every client, and exits 0.

    \b
    Every client, even on a read-only server, is sandboxed: SQLite runs with
    an allow-list of statements, functions and table functions (see
    docs/protocol/sql.md), and every limit above is per connection.

    \b
    Reachable from other hosts (--host 0.0.0.0), give it --users FILE and
    --tls-cert/--tls-key: clients then log in with SCRAM-SHA-256, and
    speak TLS on both ports (psql with sslmode=verify-full, 'trionet sql
    query --tls-ca CA --user NAME'). A non-loopback --host without --users
    is refused unless --insecure-no-auth is given.
    """
    check_open_access(host, users_path, insecure_no_auth)
    access = load_auth(users_path, timeout=auth_timeout, failure_delay=auth_failure_delay)
    if db is None:
        if read_write:
            raise click.UsageError(
                "--read-write needs --db: the shipped catalogue is served read-only; "
                "make a copy to write to with 'trionet sql import-usgs --db FILE'"
            )
        from trionet.sql import catalog

        try:
            with _import_progress("building the catalogue") as progress:
                db = catalog.ensure_catalogue(progress=progress)
        except (ValueError, OSError) as exc:
            raise click.ClickException(f"cannot build the catalogue: {exc}") from None
        log.info("serving the USGS catalogue (shipped with trionet) from %s", db)
    try:
        database = Database(
            db,
            read_write=read_write,
            external_writes=external_writes,
            max_sql_bytes=max_request_bytes,
            max_value_bytes=max_value_bytes,
            max_temp_bytes=max_temp_bytes,
            max_like_pattern_bytes=max_like_pattern_bytes,
            max_row_bytes=max_row_bytes,
        )
    except SqlError as exc:
        raise click.ClickException(exc.message) from None
    if workers > 1:
        # Server-wide totals, shared by the workers (trionet/sql/workers.py).
        query_threads = share(query_threads, workers)
        max_sqlite_memory_bytes = max_sqlite_memory_bytes and share(max_sqlite_memory_bytes, workers)
        max_connections = max_connections and share(max_connections, workers)
    limit_sqlite_memory(max_sqlite_memory_bytes)
    open_files = raise_open_files_limit()
    if max_connections is None:
        # The descriptors are shared by both ports: each gets half when both listen.
        max_connections = default_max_connections(open_files, read_write) // (1 if no_pg else 2)
    distinct_ports(port=port, pg_port=0 if no_pg else pg_port)
    log.info(
        "at most %d connections%s%s (%d descriptors)", max_connections, "" if no_pg else " per port",
        " per worker" if workers > 1 else "", open_files,
    )  # fmt: skip
    config = SqlServerConfig(
        query_timeout=query_timeout,
        max_rows=max_rows,
        max_request_bytes=max_request_bytes,
        max_batch_bytes=max_batch_bytes,
        max_threads=query_threads,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        idle_transaction_timeout=idle_transaction_timeout,
    )
    pg_config = PgConfig(
        query_timeout=query_timeout,
        max_rows=max_rows,
        max_batch_bytes=max_batch_bytes,
        max_threads=query_threads,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        idle_transaction_timeout=idle_transaction_timeout,
        **({"startup_timeout": auth_timeout} if access is not None else {}),
    )

    busy_poll = busy_poll_us / 1e6  # both ports' ready loops, in seconds

    def build(pids=None, forward_cancel=None) -> tuple[SqlServer, PgServer | None]:
        server = SqlServer(database, config, tls=tls, auth=access)
        server.service.ready.busy_poll = busy_poll
        if no_pg:
            return server, None
        # One pool of statement threads for both fronts: --query-threads bounds them together.
        pg = PgServer(
            database, pg_config, limiter=server.statement_limiter, pids=pids, forward_cancel=forward_cancel,
            tls=tls, auth=access,
        )  # fmt: skip
        pg.service.ready.busy_poll = busy_poll
        return server, pg

    if workers > 1:
        try:
            serve_workers(
                workers, host=host, port=port, pg_port=None if no_pg else pg_port, grace=grace, build=build,
                metrics=metrics, placement=placement == "cpu",
            )  # fmt: skip
        except OSError as exc:
            raise click.ClickException(describe_os_error(exc)) from None
        return
    server, pg = build()

    async def serve_both() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, host, port)  # first, so its port is the first logged
            if pg is not None:
                await nursery.start(pg.serve, host, pg_port)

    def shutdown(grace: float) -> None:
        server.shutdown(grace)
        if pg is not None:
            pg.shutdown(grace)

    serve_until_signal(
        "sql", serve_both, shutdown=shutdown, grace=grace, registry=sql_registry(server, pg), metrics=metrics
    )


def check_open_access(host: str | None, users_path: str | None, insecure_no_auth: bool) -> None:
    """Refuse a server that anyone on the network could use: a non-loopback ``--host`` without ``--users``.

    Raises:
        click.ClickException: one line saying what to add.
    """
    if users_path is not None or insecure_no_auth or (host is not None and is_loopback(host)):
        return
    where = f"[{host}]" if host and ":" in host else (host or "every address")
    raise click.ClickException(
        f"--host {where} is not a loopback address and --users is not given: anyone who can reach the ports "
        "could use the database; give --users FILE (or --insecure-no-auth to trust every client)"
    )


def load_auth(users_path: str | None, *, timeout: float, failure_delay: float) -> auth.AuthConfig | None:
    """The :class:`~trionet.sql.auth.AuthConfig` of ``--users`` (None without it); warns about plain passwords.

    Raises:
        click.ClickException: the file cannot be read or a line is malformed (``FILE:LINE: ...``).
    """
    if users_path is None:
        return None
    try:
        users, plain = auth.load_users(users_path)
    except auth.UsersFileError as exc:
        raise click.ClickException(str(exc)) from None
    if plain:
        lines = ", ".join(str(n) for n in plain)
        log.warning(
            "%s keeps plain passwords (line %s): 'trionet sql passwd NAME' prints a SCRAM-SHA-256 line to use instead",
            users_path,
            lines,
        )
    log.info("%d user(s) from %s: clients log in with %s", len(users), users_path, auth.MECHANISM)
    return auth.AuthConfig(users, failure_delay=failure_delay, timeout=timeout)


PASSWORD_ENV = "TRIONET_PASSWORD"


def read_password(user: str | None) -> str | None:
    """The password for ``--user``: ``$TRIONET_PASSWORD``, else asked at the terminal; None without a user."""
    if user is None:
        return None
    password = os.environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    try:
        return getpass.getpass(f"Password for {user}: ")
    except (EOFError, KeyboardInterrupt):
        raise click.Abort() from None


def user_option(fn: Callable) -> Callable:
    """``--user NAME`` for the client commands (the password: ``$TRIONET_PASSWORD`` or a prompt)."""
    return click.option(
        "--user",
        "-U",
        envvar="TRIONET_USER",
        metavar="NAME",
        help="Log in as NAME, for a server started with --users (also $TRIONET_USER). The password is read "
        f"from ${PASSWORD_ENV}, or asked for at the terminal.",
    )(fn)


def parse_param(text: str):
    """A ``--param`` value: a JSON literal when it is one (5, 2.5, null, "x"), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, (list, dict)):
        return text  # only scalars are parameters; keep the text as written
    return value


@sql.command()
@click.argument("statement", metavar="SQL")
@host_option()
@port_option(protocol.DEFAULT_PORT)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="VALUE",
    help="A value for the next '?' (repeatable). Read as JSON when it is a JSON literal: 5 is an "
    "integer, 2.5 a real, null is NULL, \"5\" the text 5; anything else is text.",
)
@click.option(
    "--named",
    "-n",
    "named",
    multiple=True,
    metavar="NAME=VALUE",
    help="A value for ':NAME' in the statement (repeatable); VALUE is read like --param.",
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="Output format. 'table' switches to 'line' (one 'column | value' line per value) when it is "
    "wider than the terminal; output to a pipe is never cut to a width.",
)
@click.option(
    "--max-rows", type=click.IntRange(0), default=None, metavar="N",
    help="Ask for at most N rows; a cut result is reported on stderr.",
)
@click.option(
    "--timeout", type=click.FloatRange(0), default=60.0, show_default=True, metavar="SECONDS",
    help="Give up waiting for the answer after this long.",
)
@user_option
@client_tls_options
def query(statement, host, port, params, named, fmt, max_rows, timeout, user, tls) -> None:
    """Run one SQL statement on a trionet SQL server and print the result.

    \b
    Examples:
      trionet sql query "SELECT count(*) FROM quakes"
      trionet sql query "SELECT time, mag, place FROM quakes WHERE mag >= ? ORDER BY mag DESC" -p 6
      trionet sql query "SELECT * FROM quakes WHERE place LIKE :p" -n p=%Oklahoma --format json

    An error is printed on stderr and the exit status is 1.
    """
    if params and named:
        raise click.UsageError("use either --param (for '?') or --named (for ':name'), not both")
    bound: list | dict | None = None
    if params:
        bound = [parse_param(p) for p in params]
    elif named:
        bound = {}
        for item in named:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise click.UsageError(f"--named takes NAME=VALUE, got {item!r}")
            bound[name.lstrip(":")] = parse_param(value)

    password = read_password(user)

    async def _run():
        with trio.fail_after(timeout if timeout else float("inf")):
            async with connect(host, port, tls=tls, user=user, password=password) as conn:
                return await conn.query(statement, bound, max_rows=max_rows)

    try:
        result = trio.run(_run)
    except SqlError as exc:
        click.echo(f"error [{exc.code}]: {exc.message}{connection_hint(exc, port)}", err=True)
        sys.exit(1)
    except trio.TooSlowError:
        click.echo(f"error [timeout]: no complete answer within {timeout}s", err=True)
        sys.exit(1)
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns if tty else None
    click.echo(format_result(result, fmt, width=width), nl=False)
    if tty and fmt in ("table", "line", "markdown") and result.columns:
        click.echo(row_count(result))
    if fmt == "csv" and not result.columns:
        click.echo(changed_line(result), err=True)
    if fmt != "json" and (notice := truncation_notice(result)):
        click.echo(notice, err=True)


def connection_hint(exc: SqlError, port: int) -> str:
    """What to add to a failed connection's message: how to start a server there; empty for other errors."""
    if not isinstance(exc, SqlConnectionError) or not exc.message.startswith(("cannot connect", "no answer from")):
        return ""
    where = "" if port == protocol.DEFAULT_PORT else f" --port {port}"
    return f" (is a server running? start one with 'trionet sql serve{where}')"


@sql.command()
@host_option()
@port_option(protocol.DEFAULT_PORT)
@click.option(
    "--file", "-f", "script", type=click.File("r", encoding="utf-8"), default=None, metavar="FILE",
    help="Run the statements in FILE instead of reading stdin ('-' is stdin).",
)
@click.option(
    "--continue-on-error", is_flag=True,
    help="In a script (-f or a pipe), run on past a failed statement; the exit status is still 1.",
)
@click.option("--no-pager", is_flag=True, help="Never page long results through $PAGER (default 'less -SFRX').")
@user_option
@client_tls_options
def shell(host, port, script, continue_on_error, no_pager, user, tls) -> None:
    """An SQL session with line editing, history and completion, or a script runner.

    \b
    End a statement with ';' (it may span several lines). sqlite3 and psql
    habits both work: .tables/\\dt, .schema/\\d, .mode, .headers, \\x,
    .timer/\\timing, .read/\\i, .output/\\o, .once, .help/\\?, .quit/\\q.
    Ctrl-C drops the line being typed or cancels the running statement;
    Ctrl-D on an empty line leaves. History: ~/.trionet_sql_history
    (or $TRIONET_SQL_HISTORY).

    \b
    From a pipe or -f FILE no prompt is printed and the first failed
    statement stops the run with exit status 1:
      trionet sql shell < script.sql
      trionet sql shell -f script.sql --continue-on-error
    """
    from trionet.sql.shell import run_shell

    try:
        status = run_shell(
            host,
            port,
            script=script,
            continue_on_error=continue_on_error,
            pager=not no_pager,
            tls=tls,
            user=user,
            password=read_password(user),
        )
    except SqlError as exc:
        click.echo(f"error [{exc.code}]: {exc.message}{connection_hint(exc, port)}", err=True)
        sys.exit(1)
    sys.exit(status)


@sql.command()
@click.argument("name")
def passwd(name) -> None:
    """Print a --users line for NAME, with a SCRAM-SHA-256 verifier of a password asked at the terminal.

    \b
    The line holds no password (only what PostgreSQL keeps in pg_authid:
    a salt and two keys), so the users file reveals none:
      trionet sql passwd alice >> users.txt
      trionet sql serve --users users.txt
    The password comes from $TRIONET_PASSWORD when it is set.
    """
    if problem := auth.name_problem(name):
        raise click.UsageError(f"cannot use the name {name!r}: {problem}")
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True, err=True)
    if not password:
        raise click.UsageError("the password is empty")
    try:
        verifier = auth.make_verifier(password)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{name}:{verifier}")


@contextlib.contextmanager
def _import_progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress callback drawing a bar on a terminal's stderr; None when stderr is not a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@sql.command("import-usgs")
@click.argument("csv_files", metavar="[CSV...]", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--db",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file to load into (created if missing).",
)
def import_usgs(csv_files, db) -> None:
    """Load USGS ComCat CSV exports into table 'quakes' of an SQLite file.

    \b
    Without CSV files, loads the catalogue that ships with trionet (M3.0+,
    contiguous U.S., 1995-2015). Files may be plain or xz-compressed (.xz).
    The files are streamed, so any size works. Importing the same file again
    updates rows in place (by event id) and never duplicates them. A row that
    cannot be read is reported as FILE:LINE: REASON on stderr, the good rows
    are still loaded, and the exit status is 1.
    """
    from trionet.sql import catalog

    try:
        with contextlib.ExitStack() as stack:
            if not csv_files:
                csv_files = [stack.enter_context(catalog.shipped_csv())]
            progress = stack.enter_context(_import_progress("importing"))
            report = catalog.import_usgs(csv_files, db, progress=progress)
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise click.ClickException(str(exc)) from None
        raise click.ClickException(
            f"{db}: database is locked: another program is using it; a read-only 'trionet sql serve' holds it "
            "while clients are connected (start it with --allow-external-writes, or stop it, to import)"
        ) from None
    except (ValueError, OSError, sqlite3.Error) as exc:
        raise click.ClickException(str(exc)) from None
    for bad in report.bad_rows:
        click.echo(f"{bad}", err=True)
    click.echo(
        f"{report.rows_imported} row(s) imported into {db} from {report.rows_read} read; "
        f"{len(report.bad_rows)} bad row(s)"
    )
    if report.bad_rows:
        sys.exit(1)


@sql.command("fetch-usgs")
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default="1995-01-01", show_default=True, help="First day (UTC).")
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), default="2015-12-31", show_default=True, help="Last day (UTC), included.")
@click.option("--min-magnitude", type=float, default=3.0, show_default=True, help="Smallest magnitude.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV file to write.")
@click.option("--url", default=None, help="Event service to ask (default: the USGS FDSN event service).")
def fetch_usgs(start, end, min_magnitude, output, url) -> None:
    """Download the contiguous-U.S. catalogue from the USGS event service as CSV.

    \b
    Then load it:  trionet sql import-usgs OUTPUT --db quakes.sqlite
    Needs internet access to earthquake.usgs.gov.
    """
    from trionet.sql import catalog

    kwargs = {"url": url} if url else {}
    try:
        count = catalog.fetch_usgs(
            output, start=start.date(), end=end.date(), min_magnitude=min_magnitude, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"download failed: {exc}") from None
    click.echo(f"{count} event(s) written to {output}")
