"""The trio client of the SQL server: ``async with connect(...) as conn: await conn.query(...)``.

A connection may be shared by several tasks: requests are pipelined (sent
without waiting for earlier answers) and the answers, which the server sends
in request order, are routed back to the task that asked. Large results can
be read row by row with :meth:`SqlConnection.stream`, which applies
backpressure all the way to the server.
"""

from __future__ import annotations

import collections
import itertools
import math
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from trionet.framing import EOF
from trionet.serving import receive_event
from trionet.sql import protocol
from trionet.sql.auth import ClientLogin
from trionet.sql.errors import SqlConnectionError, SqlError
from trionet.sql.result import Result

__all__ = ["Result", "SqlConnection", "SqlConnectionError", "StreamingResult", "connect"]


@dataclass(eq=False)
class StreamingResult:
    """A result read as it arrives: ``columns`` first, then ``async for row in result``.

    After the loop, ``truncated``, ``changes`` and ``server_ms`` are set.
    """

    _receive: trio.MemoryReceiveChannel
    columns: list[str] = field(default_factory=list)
    truncated: bool = False
    changes: int = 0
    last_insert_rowid: int | None = None
    server_ms: float = 0.0
    _batch: collections.deque = field(default_factory=collections.deque)
    _finished: bool = False

    async def _next_frame(self):
        try:
            frame = await self._receive.receive()
        except trio.EndOfChannel:
            raise SqlConnectionError("connection closed before the answer was complete") from None
        if isinstance(frame, SqlConnectionError):
            raise frame
        if isinstance(frame, protocol.ErrorReply):
            self._finished = True
            raise SqlError(frame.code, frame.message)
        return frame

    async def _start(self) -> None:
        frame = await self._next_frame()
        if not isinstance(frame, protocol.Columns):
            raise SqlConnectionError(f"expected columns, got {type(frame).__name__}")
        self.columns = frame.columns

    def __aiter__(self) -> AsyncIterator[tuple]:
        return self

    async def __anext__(self) -> tuple:
        while not self._batch:
            if self._finished:
                raise StopAsyncIteration
            frame = await self._next_frame()
            if isinstance(frame, protocol.Rows):
                self._batch.extend(frame.rows)
            elif isinstance(frame, protocol.Done):
                self._finished = True
                self.truncated = frame.truncated
                self.changes = frame.changes
                self.last_insert_rowid = frame.last_insert_rowid
                self.server_ms = frame.ms
        return self._batch.popleft()


@dataclass(eq=False)
class _Pending:
    id: int
    send: trio.MemorySendChannel


class SqlConnection:
    """One connection to a trionet SQL server. Create it with :func:`connect`."""

    def __init__(self, stream: trio.abc.Stream, hello: protocol.Hello, proto: protocol.ClientProtocol) -> None:
        self._stream = stream
        self._proto = proto
        self.server = hello
        """What the server said when we connected (read-only, limits)."""
        self._ids = itertools.count(1)
        self._send_lock = trio.Lock()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._failure: SqlConnectionError | None = None

    async def query(self, sql: str, params: Sequence | dict | None = None, *, max_rows: int | None = None) -> Result:
        """Run one statement and return its whole result.

        Args:
            sql: one SQL statement.
            params: values for ``?`` (a sequence) or ``:name`` (a dict).
            max_rows: cut the result after this many rows (the server's own
                cap still applies).

        Raises:
            SqlError: the server answered with an error (``.code`` says which).
            SqlConnectionError: the connection failed.
        """
        async with self.stream(sql, params, max_rows=max_rows) as result:
            rows = [row async for row in result]
        return Result(result.columns, rows, result.truncated, result.changes, result.last_insert_rowid, result.server_ms)

    @asynccontextmanager
    async def stream(
        self, sql: str, params: Sequence | dict | None = None, *, max_rows: int | None = None
    ) -> AsyncIterator[StreamingResult]:
        """Run one statement and read its rows as they arrive.

        ``async with conn.stream(sql) as result: async for row in result: ...``.
        Leaving the block early discards the rest of the result.
        """
        send, receive = trio.open_memory_channel(1)
        async with send, receive:
            async with self._send_lock:
                if self._failure is not None:
                    raise self._failure
                req_id = next(self._ids)
                pending = _Pending(req_id, send.clone())
                self._pending.append(pending)
                try:
                    await self._stream.send_all(protocol.encode_request(sql, params, id=req_id, max_rows=max_rows))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise SqlConnectionError(f"cannot send the request: {exc}") from None
            result = StreamingResult(receive)
            await result._start()
            yield result

    async def _read_replies(self) -> None:
        try:
            while True:
                event = await receive_event(self._stream, self._proto)
                if event is EOF:
                    raise SqlConnectionError("the server closed the connection")
                if isinstance(event, protocol.Bye):
                    raise SqlConnectionError(f"the server closed the connection ({event.code}): {event.reason}")
                if isinstance(event, protocol.Hello):
                    continue
                if not self._pending:
                    if isinstance(event, protocol.ErrorReply):
                        continue  # a complaint about a line we did not send as a request
                    raise protocol.RemoteProtocolError(f"unexpected {type(event).__name__} with no request pending")
                head = self._pending[0]
                if event.id is not None and event.id != head.id:
                    raise protocol.RemoteProtocolError(f"answer for request {event.id!r}, expected {head.id}")
                try:
                    await head.send.send(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the caller left early; drop the rest of its answer
                if isinstance(event, (protocol.Done, protocol.ErrorReply)):
                    self._pending.popleft()
                    await head.send.aclose()
        except (SqlConnectionError, protocol.RemoteProtocolError, trio.BrokenResourceError, OSError) as exc:
            failure = exc if isinstance(exc, SqlConnectionError) else SqlConnectionError(str(exc))
            self._failure = failure
            while self._pending:
                pending = self._pending.popleft()
                try:
                    pending.send.send_nowait(failure)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                await pending.send.aclose()


async def _open(
    host: str, port: int, tls: ssl.SSLContext | None, user: str | None, password: str | None
) -> tuple[trio.abc.Stream, protocol.ClientProtocol, protocol.Hello]:
    """Connect, handshake TLS when asked, read the hello and log in when the server asks; the caller bounds the time."""
    where = f"{host}:{port}"
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_hostname=host)
            await stream.do_handshake()
        proto = protocol.ClientProtocol()
        hello = await receive_event(stream, proto)
        if isinstance(hello, protocol.Bye):
            raise SqlConnectionError(f"{where} refused the connection ({hello.code}): {hello.reason}")
        if hello is EOF and tls is None:
            raise SqlConnectionError(f"{where} closed the connection without a hello (if it serves TLS, use --tls-ca)")
        if not isinstance(hello, protocol.Hello):
            raise SqlConnectionError(f"{where} is not a trionet SQL server")
        if hello.auth:
            login = ClientLogin(hello, user, password, where)
            line = login.first()
            while line is not None:
                await stream.send_all(line)
                line = login.receive(await receive_event(stream, proto))
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, proto, hello


@asynccontextmanager
async def connect(
    host: str = "127.0.0.1",
    port: int = protocol.DEFAULT_PORT,
    *,
    connect_timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
    user: str | None = None,
    password: str | None = None,
) -> AsyncIterator[SqlConnection]:
    """Connect to a trionet SQL server.

    Args:
        host, port: the server's address.
        connect_timeout: seconds to wait for the connection, the TLS
            handshake, the greeting and the login.
        tls: speak TLS, verifying the server with this context
            (:func:`trionet.tls.client_context`); the server's name is ``host``.
        user, password: the credentials, for a server started with
            ``--users`` (the password never crosses the wire: SCRAM-SHA-256).

    Raises:
        SqlConnectionError: the server cannot be reached, is not a trionet
            SQL server, fails the TLS check, or refuses the login.
    """
    where = f"{host}:{port}"
    try:
        with trio.fail_after(connect_timeout if connect_timeout > 0 else math.inf):
            stream, proto, hello = await _open(host, port, tls, user, password)
    except trio.TooSlowError:
        raise SqlConnectionError(f"no answer from {where} within {connect_timeout}s") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise SqlConnectionError(f"TLS with {where} failed: certificate verify failed: {cause.verify_message}") from None
        if isinstance(cause, ssl.SSLError):
            raise SqlConnectionError(f"TLS with {where} failed: {cause.reason or cause}") from None
        raise SqlConnectionError(f"{where} closed the connection ({exc.__cause__ or exc})") from None
    except OSError as exc:
        raise SqlConnectionError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    except protocol.RemoteProtocolError as exc:
        raise SqlConnectionError(f"{where} is not a trionet SQL server ({exc})") from None
    async with stream:
        conn = SqlConnection(stream, hello, proto)
        # The reader task never raises (it turns every failure into
        # SqlConnectionError for the callers), so whatever the body raises is
        # its own error: re-raise it as is, not wrapped in an ExceptionGroup.
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn._read_replies)
            try:
                yield conn
            except BaseException as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
