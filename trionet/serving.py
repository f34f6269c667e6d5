"""The trio layer every trionet server shares: listeners, per-connection tasks, graceful shutdown.

A :class:`TCPService` owns one nursery of connection tasks. Each accepted
socket becomes a task that runs the service's handler; whatever the handler
raises (a reset peer, a protocol error, even a bug) ends that one connection
and is logged, never the server. ``trio.Cancelled`` is never swallowed.

Shutdown follows hypercorn's shape: :meth:`TCPService.shutdown` closes the
listeners, sets :attr:`TCPService.draining` so handlers finish the request in
hand and close, and puts a deadline of ``now + grace`` on the connection
nursery; whatever is still running then is cancelled.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import outcome
import trio

from trionet.addresses import format_address
from trionet.batchsend import BatchSender
from trionet.errors import first_message
from trionet.framing import NEED_DATA
from trionet.tls import EagerSocketStream, TLSServerConfig, handshake

__all__ = [
    "Connection",
    "ListenError",
    "DirectSocketIO",
    "IdleWatch",
    "ParkedServer",
    "ReadyLoop",
    "SendWatchdog",
    "TCPService",
    "format_address",
    "receive_event",
]

RECEIVE_CHUNK = 65536

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept() errors that mean "out of capacity for now": retried after a pause (as trio.serve_listeners does)."""
ACCEPT_RETRY_SECONDS = 0.1


class ListenError(OSError):
    """A service could not listen: its ``name`` and the ``address`` it tried, and the system's reason.

    It is an ``OSError`` with the original ``errno`` and ``strerror``, so
    callers that catch ``OSError`` keep working; the CLI turns it into one
    line (``trionet.cliutil.describe_os_error``).
    """

    def __init__(self, cause: OSError, service: str, address: tuple[str, int]) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.service = service
        self.address = address

    def __str__(self) -> str:
        return f"{self.service} cannot listen on {format_address(self.address)}: {self.strerror}"


@dataclass(eq=False)
class Connection:
    """One accepted client: its stream, and what the log line at close reports."""

    stream: trio.abc.Stream
    """The client's stream: a ``trio.SocketStream``, or a ``trio.SSLStream`` over one when the service has TLS."""
    peer: str
    service: "TCPService"
    opened: float = field(default_factory=trio.current_time)
    requests: int = 0
    handed: bytes | None = None
    """The state another worker moved this connection here with (:meth:`TCPService.take`); None for a new one."""
    moved_to: int | None = None
    """Set by the handler when it moved the connection to that worker: its socket closes here, without a word."""

    @property
    def draining(self) -> trio.Event:
        """Set when the server shuts down: finish the request in hand, then close."""
        return self.service.draining


Handler = Callable[[Connection], Awaitable[None]]


class TCPService:
    """Accept TCP connections and run ``handler`` for each one in its own task.

    Args:
        name: the service's name in log lines (``sql``, ``names``, ...).
        handler: ``async def handler(conn: Connection)``; the stream is closed
            for it when it returns.
        logger: where open/close lines go.
        quiet: log opened/closed connections at debug level, not info (a
            metrics endpoint scraped every few seconds).
        tls: serve TLS from the first byte (:mod:`trionet.tls`): each
            connection's handshake runs, under its own timeout, before the
            handler is called, so a client that stalls it never reaches the
            service's admission. Failed handshakes are counted in
            :attr:`tls_failures_total` and logged at debug level.

    Attributes:
        connections: the connections open now.
        accepted_total: connections accepted since start.
        requests_closed_total: requests of the connections already closed
            (those of open ones are on each :class:`Connection`).
    """

    def __init__(
        self,
        name: str,
        handler: Handler,
        logger: logging.Logger,
        *,
        quiet: bool = False,
        tls: TLSServerConfig | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.tls_failures_total = 0
        self._handler = handler
        self._log = logger
        self._conn_level = logging.DEBUG if quiet else logging.INFO
        self.draining = trio.Event()
        self.connections: set[Connection] = set()
        self.accepted_total = 0
        self.requests_closed_total = 0
        self._accept_scope: trio.CancelScope | None = None
        self._conn_scope: trio.CancelScope | None = None
        self._pending_grace: float | None = None
        self._adopted: list | None = None
        self._conn_nursery: trio.Nursery | None = None
        self._open = 0  # connections whose task runs (TLS handshakes included)
        self.placer = None
        """With several workers, a :class:`trionet.placement.Placer`: this worker's load, kept on the board
        as connections open and close, for the handler that moves connections (the PostgreSQL port's)."""
        self.ready = ReadyLoop()
        """Where connections waiting for their next request can park (:class:`ReadyLoop`); runs while :meth:`serve` does."""

    def adopt(self, sockets: list) -> None:
        """Serve these listening sockets (``socket.socket``) instead of binding ``host``:``port`` in :meth:`serve`.

        For the worker processes of a multi-process server
        (:mod:`trionet.workers`): the supervisor binds and logs the port, each
        worker serves its share. The service owns the sockets from now on and
        closes them when it stops. Their "listening" line is logged at debug level.
        """
        self._adopted = list(sockets)

    async def serve(
        self,
        host: str | None,
        port: int,
        *,
        backlog: int | None = None,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` and serve until cancelled or shut down.

        Reports the bound addresses through ``task_status`` (so ``port=0``
        works in tests), and returns once :meth:`shutdown` was called and
        every connection has finished or the grace period ran out.
        """
        listen_level = logging.INFO
        if self._adopted is not None:
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in self._adopted]
            listen_level = logging.DEBUG  # the supervisor said it once for every worker
        else:
            try:
                listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
            except OSError as exc:
                raise ListenError(exc, self.name, (host or "*", port)) from exc
        addresses = [l.socket.getsockname()[:2] for l in listeners]
        try:
            async with trio.open_nursery() as ready_nursery:
                # The ready loop outlives every connection: it stops once the
                # last one has ended (a parked task is woken to go on alone).
                await ready_nursery.start(self.ready.run)
                try:
                    await self._serve_connections(listeners, addresses, listen_level, task_status)
                finally:
                    ready_nursery.cancel_scope.cancel()
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _serve_connections(self, listeners: list, addresses: list, listen_level: int, task_status) -> None:
        try:
            await self._accept_and_run(listeners, addresses, listen_level, task_status)
        finally:
            self._conn_nursery = None  # a connection handed over from now on is closed (take)

    async def _accept_and_run(self, listeners: list, addresses: list, listen_level: int, task_status) -> None:
        async with trio.open_nursery() as conn_nursery:
            self._conn_scope = conn_nursery.cancel_scope
            self._conn_nursery = conn_nursery
            if self.placer is not None and self._pending_grace is None:
                self.placer.publish(self._open)
            with trio.CancelScope() as self._accept_scope:
                if self._pending_grace is not None:
                    self._accept_scope.cancel()
                async with trio.open_nursery() as accept_nursery:
                    for listener in listeners:
                        accept_nursery.start_soon(self._accept_loop, listener, conn_nursery)
                    for address in addresses:
                        self._log.log(listen_level, "%s listening on %s", self.name, format_address(address))
                    task_status.started(addresses)
            # Close the listeners now, not when the last connection ends:
            # new clients are refused at once instead of queueing unseen.
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            if self._pending_grace is not None:
                self._arm_grace(self._pending_grace)
            self._log.info(
                "%s stopped accepting; %d connection(s) finishing", self.name, len(self.connections)
            )

    @property
    def grace_deadline(self) -> float:
        """When connections still running are cancelled (trio time): ``inf`` until :meth:`shutdown`.

        A handler that wants to say goodbye to its client (interrupt the work
        in hand, answer, close cleanly) must do it before this.
        """
        return self._conn_scope.deadline if self._conn_scope is not None else math.inf

    def shutdown(self, grace: float) -> None:
        """Stop accepting, ask handlers to finish, and cancel what remains after ``grace`` seconds."""
        self.draining.set()
        self._pending_grace = grace
        if self.placer is not None:
            self.placer.withdraw()
        if self._accept_scope is not None:
            self._accept_scope.cancel()
            if self._conn_scope is not None:
                self._arm_grace(grace)

    def _arm_grace(self, grace: float) -> None:
        deadline = trio.current_time() + grace if math.isfinite(grace) else math.inf
        self._conn_scope.deadline = min(self._conn_scope.deadline, deadline)

    async def _accept_loop(self, listener: trio.SocketListener, conn_nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of descriptors or memory: log, back off a little, keep
                # serving the connections we have, as trio's serve_listeners
                # does for exactly these errors. Anything else is a broken
                # listener, and raising it ends the service loudly.
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._log.error("%s accept failed: %s; retrying in %.1fs", self.name, exc, ACCEPT_RETRY_SECONDS)
                await trio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            conn_nursery.start_soon(self._run_connection, stream)

    def take(self, sock: socket.socket, state: bytes) -> None:
        """Serve a connection another worker moved here (:mod:`trionet.placement`), ``state`` its handler's.

        The handler finds ``state`` in :attr:`Connection.handed`. A service
        that is not serving (not started yet, or draining) closes it: the
        other worker only moves connections to one that says it takes them,
        so this is the rare race with a shutdown.
        """
        if self._conn_nursery is None or self.draining.is_set():
            sock.close()
            return
        if self.placer is not None:
            self.placer.moved_in += 1
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._conn_nursery.start_soon(self._run_connection, stream, state)

    async def _run_connection(self, stream: trio.SocketStream, handed: bytes | None = None) -> None:
        self._open += 1
        if self.placer is not None:
            self.placer.publish(self._open)
        try:
            await self._serve_stream(stream, handed)
        finally:
            self._open -= 1
            if self.placer is not None and not self.draining.is_set():
                self.placer.publish(self._open)

    async def _serve_stream(self, stream: trio.SocketStream, handed: bytes | None) -> None:
        try:
            peer = format_address(stream.socket.getpeername())
        except OSError:
            peer = "?"  # already reset by the peer
        if self.tls is not None and handed is None:
            try:
                wrapped = await handshake(stream, self.tls.context, self.tls.handshake_timeout)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.tls_failures_total += 1
                self._log.debug("%s TLS handshake failed: %s: %s", self.name, peer, _handshake_failure(exc))
                await trio.aclose_forcefully(stream)
                return
            stream = wrapped
        conn = Connection(stream=stream, peer=peer, service=self, handed=handed)
        self.connections.add(conn)
        if handed is None:  # (one moved here was counted where it was accepted)
            self.accepted_total += 1
        self._log.log(self._conn_level, "%s connection opened: %s", self.name, peer)
        outcome = "closed"
        try:
            await self._handler(conn)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            outcome = f"closed by peer ({first_message(group)})"
        except* Exception:
            outcome = "closed after an internal error"
            self._log.exception("%s handler failed for %s", self.name, peer)
        finally:
            self.connections.discard(conn)
            self.requests_closed_total += conn.requests
            if self.tls is not None:
                await _close_tls(stream)
            if not _close_socket(stream):
                await trio.aclose_forcefully(stream)
            if conn.moved_to is not None:
                outcome = f"moved to worker {conn.moved_to}"
            self._log.log(
                self._conn_level,
                "%s connection %s: %s, %.3fs, %d request(s)",
                self.name,
                outcome,
                peer,
                trio.current_time() - conn.opened,
                conn.requests,
            )


def _close_socket(stream: trio.abc.Stream) -> bool:
    """Close the socket of a plain TCP stream (or of the one under a TLS stream) now; False for other streams.

    What ``aclose_forcefully`` does for it, without its checkpoint: that
    checkpoint runs in a cancelled scope, so trio registers a deadline for
    it, expires it, and raises and catches ``Cancelled``, on every
    connection (the largest single item of a short DNS connection's
    close in a profile, docs/benchmarks.md).
    """
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, EagerSocketStream):
        stream = stream.stream
    if type(stream) is not trio.SocketStream:
        return False
    stream.socket.close()
    return True


TLS_CLOSE_SECONDS = 1.0
"""How long a TLS connection's close_notify may take to send; a peer that never reads is not waited for."""


async def _close_tls(stream: trio.abc.Stream) -> None:
    """Say close_notify, so a TLS client sees a clean end, not a truncation attack (bounded, errors ignored)."""
    with trio.move_on_after(TLS_CLOSE_SECONDS):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "not finished in time"
    cause = exc.__cause__ or exc
    return str(cause) or type(cause).__name__


async def receive_event(stream: trio.abc.ReceiveStream, framer, max_bytes: int = RECEIVE_CHUNK):
    """Read from ``stream`` until ``framer`` has an event, and return it.

    ``framer`` is any sans-IO framer of :mod:`trionet.framing`; at end of
    stream it is told so, and its final event (``EOF`` or a truncated frame)
    is returned.
    """
    while True:
        event = framer.next_event()
        if event is not NEED_DATA:
            return event
        framer.receive_data(await stream.receive_some(max_bytes))


class SendWatchdog:
    """Notice a client that stops reading: a send that stays blocked too long.

    Cheaper than a cancel scope around every send (which updates trio's
    deadline heap twice per send, the largest single cost per request
    measured in the SQL server): a send only flips a flag and bumps a
    counter, and :meth:`watch`, one sleeping task per connection, looks every
    ``timeout / 2`` seconds. A send blocked at two looks in a row has been
    stuck for at least ``timeout / 2`` and at most ``timeout`` seconds.

    Args:
        timeout: seconds; 0 or inf for no limit.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout if timeout > 0 else math.inf
        self.sending = False
        self.sends = 0
        self.stalled = False
        self._seen = -1

    async def send(self, stream: trio.abc.SendStream, data: bytes) -> None:
        """``stream.send_all(data)``, watched."""
        self.sending = True
        self.sends += 1
        try:
            await stream.send_all(data)
        finally:
            self.sending = False

    async def watch(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` (and set :attr:`stalled`) when a send is stuck; runs until cancelled."""
        while True:
            await trio.sleep(self.timeout / 2)
            if self.look():
                scope.cancel()
                return

    def look(self) -> bool:
        """One of :meth:`watch`'s looks, for a caller that watches many connections with one task.

        Call it every ``timeout / 2`` seconds; True (and :attr:`stalled`
        set) when the same send was blocked at this look and the previous one.
        """
        if self.sending and self.sends == self._seen:
            self.stalled = True
            return True
        self._seen = self.sends if self.sending else -1
        return False



class IdleWatch:
    """An idle timeout for a loop that waits once per request, without a cancel scope per wait.

    ``with trio.move_on_at(deadline):`` around every wait for the next
    request enters and leaves a cancel scope and registers its deadline in
    trio's heap each time: measured on the PostgreSQL port, about as much
    as the wait itself (docs/benchmarks.md). Here the loop only writes down
    when its wait must end (:attr:`deadline`; None while it is not waiting)
    and :meth:`watch`, one sleeping task per connection, cancels the loop's
    scope once that moment has passed while the loop still waits, and sets
    :attr:`expired`. The deadline is exact: the watcher wakes at the
    deadline it saw or after ``period`` seconds, whichever comes first, and
    ``period`` is at most the shortest timeout, so a deadline set while it
    sleeps is never earlier than its next look.

    The loop must check :attr:`expired` right after a wait returns, before
    any checkpoint: a wait that ends at its deadline may have been woken by
    data just as the watcher cancelled the scope.
    """

    __slots__ = ("deadline", "expired")

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.expired = False

    async def watch(self, scope: trio.CancelScope, period: float) -> None:
        """Cancel ``scope`` once :attr:`deadline` has passed; runs until cancelled or it expires."""
        while True:
            deadline = self.deadline
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.expired = True
                scope.cancel()
                return
            # Never longer than period: a shorter deadline may be set meanwhile.
            await trio.sleep_until(now + period if deadline is None else min(deadline, now + period))


class DirectSocketIO:
    """Reads and sends on a plain TCP stream's socket that skip trio's scheduler when they can finish at once.

    ``await stream.receive_some()`` and ``await stream.send_all()`` each go
    through the scheduler (a checkpoint) and two context managers even when
    the socket is ready; on a DNS port answering small queries from memory,
    those round trips cost more than the answer. Here :meth:`read_ready`
    reads what has already arrived without waiting, :meth:`wait` waits
    until something arrives (under the caller's cancel scope), and
    :meth:`send_now` writes what the socket takes at once. The caller keeps
    trio's rules: a loop that read without waiting checkpoints once per
    round (:func:`trio.lowlevel.checkpoint`), so a client that never pauses
    gets one scheduler round per read, like every other task, and
    cancellation reaches it.

    For a stream that is not a :class:`trio.SocketStream` (TLS, in-memory
    streams in tests), :meth:`read_ready` reads nothing, :meth:`wait` is the
    stream's ``receive_some`` and :meth:`send_now` sends nothing: the
    stream's own methods do the work.

    Args:
        stream: the connection's stream.

    Error handling: a reset connection raises ``OSError`` from the direct
    calls (``trio.BrokenResourceError`` from the stream's), which the
    :class:`TCPService` treats alike.
    """

    __slots__ = ("_sock", "_stream", "direct")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.direct = type(stream) is trio.SocketStream
        """Whether the socket is used directly (a plain :class:`trio.SocketStream`)."""
        self._sock = stream.socket if self.direct else None

    def read_ready(self, framer) -> bool:
        """Feed ``framer`` what has already arrived (``b""`` at EOF); False when nothing had, or not direct."""
        if not self.direct:
            return False
        try:
            # fileno() each time, never a kept number: once the socket is
            # closed it is -1 (EBADF), not a number another connection may get.
            data = os.read(self._sock.fileno(), RECEIVE_CHUNK)
        except BlockingIOError:
            return False
        framer.receive_data(data)
        return True

    async def wait(self, framer) -> None:
        """Wait until the peer sends something (direct: until it can be read; else: read it into ``framer``)."""
        if self.direct:
            await trio.lowlevel.wait_readable(self._sock)
        else:
            framer.receive_data(await self._stream.receive_some(RECEIVE_CHUNK))

    async def park(self, ready: ReadyLoop, serve: Callable[[], bool], out: bytearray | None = None) -> bool:
        """Direct only: wait for the next request in ``ready`` (:meth:`ReadyLoop.park`), which may serve it with ``serve``."""
        return await ready.park(self._sock, serve, out)

    def send_now(self, data: bytes) -> bytes:
        """Write what the socket takes at once; return the rest (``b""`` when all of it went, ``data`` when not direct)."""
        if not self.direct:
            return data
        try:
            sent = os.write(self._sock.fileno(), data)
        except BlockingIOError:
            return data
        return data[sent:]


_sched_yield = getattr(os, "sched_yield", lambda: None)

DEFAULT_BUSY_POLL = 50e-6
"""The default longest poll of :meth:`ReadyLoop`'s thread before it sleeps (``--busy-poll-us``), as Linux's haltpoll."""

POLL_MOST_PARKED = 4
"""The most connections parked in a :class:`ReadyLoop` for its thread to poll: polling is for a few busy clients.

With more, the loop's next batch is rarely far off, and polling measured
costly: with 32 NDJSON clients over two workers, 12% more server CPU per
query and 0.88x the queries per second (docs/benchmarks.md, "Session 12").
"""


def poll_window(window: float, gap: float, limit: float) -> float:
    """The next poll window of a loop that polled ``window`` seconds, then slept, and saw a request ``gap`` after it began.

    The rule of Linux's guest halt-polling (``cpuidle-haltpoll``): a gap
    within ``limit`` would have been caught by polling longer, so the
    window doubles (from a quarter of ``limit``, up to ``limit``); a longer
    gap means the client is idle or slow, and the window halves, down to 0
    below an eighth of ``limit``. A loop that polls and finds the request
    keeps its window. So a client that sends its next request soon after
    its answer finds the loop awake (no sleep and wake-up between two
    requests: on a virtual machine a wake-up costs tens of µs), and a quiet
    server does not poll at all.
    """
    if gap <= limit:
        return min(max(window * 2, limit / 4), limit)
    return window / 2 if window > limit / 8 else 0.0


_Parked = tuple[trio.lowlevel.Task, Callable[[], bool], bytearray | None, object]
"""A parked connection in a :class:`ReadyLoop`: its task, its ``serve``, its ``out`` and its socket."""


def _write_some(sock, out: bytearray) -> bool:
    """Write what ``sock`` takes of ``out`` at once and delete that from ``out``; True if it took all of it."""
    try:
        sent = os.write(sock.fileno(), out)
    except BlockingIOError:
        return False
    del out[:sent]
    return not out


GIVE_WAY_TIMEOUT = 0.01
"""The longest :meth:`ReadyLoop.give_way` waits for the loop's thread to finish a batch (a safety net: a batch takes microseconds)."""


class ReadyLoop:
    """The course's select loop beside trio: one loop serves the waiting connections it can answer at once.

    A connection task that waits for its next request costs trio a wake-up
    of that task per request: an ``epoll_ctl`` to re-arm its socket, a pass
    through the run loop, and the task's own loop around the wait (measured
    in docs/benchmarks.md at about a third of a point query's CPU). With
    many clients, most of that is the same work done once per socket. So a
    connection task whose socket has nothing to read may :meth:`park` it
    here with a ``serve`` function; the loop keeps every parked socket in an
    epoll set of its own (level-triggered, registered once per park, not
    once per request), waits for that set, and calls ``serve()`` for each
    socket that became readable, without waking the connection's task.
    ``serve()`` reads, answers what it can answer right away (a read from
    the cache of plans, within the event loop's budget) and returns True to
    stay parked, or False to hand the connection back to its task (anything
    slow, unusual, an error, EOF, a send the socket did not take whole): the
    task's :meth:`park` then returns, and it carries on with whatever
    ``serve()`` left in the connection's buffers. The answers ``serve()``
    leaves in the connection's ``out`` buffer go out after every
    ``serve()`` of the batch, together (as the course's loop sends its
    queued replies after it has handled every readable socket): in one
    system call where the platform allows (:mod:`trionet.batchsend`), so
    that a client with many connections finds all of its answers at one
    wake-up instead of being woken, and switched to, once per answer
    (docs/benchmarks.md, "Session 15"). A connection whose socket does not
    take all of its ``out`` goes back to its task, the rest still in
    ``out``, for the task to send under its send watchdog.

    Where the loop runs. By default (``thread=True``, under trio's own
    clock) it is a thread of its own, started at the first :meth:`park`
    (a service that never parks has none) and stopped by :meth:`run`,
    blocked in ``epoll_wait`` on its set: a request then costs one wake-up
    of that thread and no pass through trio's run loop (at one client, 17.5
    µs of server CPU per round trip of a constant answer instead of 31.5:
    ``tools/bench_wake.py``, docs/benchmarks.md). With ``thread=False``, or
    under a :class:`trio.testing.MockClock` (tests, ``autojump_clock``: a
    thread trio cannot see would let the clock jump while it serves), it is
    a trio task waiting for the set with one
    :func:`trio.lowlevel.wait_readable`. A task that answers a pipelining
    client one request per checkpoint calls :meth:`give_way` before each
    checkpoint, so the thread, which gets no turn at a checkpoint, serves
    the other clients between two of them as the task loop does.

    Polling before sleeping. A thread that sleeps in ``epoll_wait`` after
    each answer is woken for each request, and with one client at a time
    that wake-up (tens of µs on a virtual machine, and caches gone cold)
    costs more than answering. So the thread first polls the set for up to
    a window (``epoll_wait`` with no timeout, yielding the CPU to anything
    runnable between two looks), and sleeps only when nothing came. The
    window follows :func:`poll_window`, Linux's halt-polling rule: it opens
    while clients send again within :attr:`busy_poll` of their answers
    (``--busy-poll-us``) and closes when they do not, so an idle server
    does not poll; and the thread polls only while at most
    :data:`POLL_MOST_PARKED` connections are parked, since with many
    clients the next batch is rarely far off. :attr:`polled` counts the
    batches found that way.

    Structured concurrency stays whole: the connection's task still owns
    the connection and waits in :meth:`park` under its own cancel scopes
    (the idle and send watchdogs, the drain, the grace deadline cancel it
    as before, and the socket leaves the set at once); the loop only
    borrows the socket while the task waits, and :meth:`run` does not
    return before its thread has ended. A lock makes each ``serve()``, each
    send of answers, and each park and unpark one step: a task is never woken
    while the loop is inside its ``serve()``, so the connection is only
    ever touched by one of them (a cancellation that comes meanwhile takes
    effect once the step is done). Fairness: the loop serves one batch (at
    most ``max_events`` sockets, one read each), then waits again; a socket
    with more to read is simply ready again in the next batch. After a
    batch that sent answers the loop yields the CPU to other processes
    (``sched_yield``), so that the clients those answers woke can send their
    next requests before it looks again.

    Rules for ``serve``: it must not block and must not call trio (it may
    run in the loop's thread; :attr:`now` is its clock), and it must either
    read the socket (consume what made it ready) or return False, or the
    loop would see the same socket ready for ever. An exception it raises
    goes to the parked task, as if its own read had raised it.

    Where ``select.epoll`` does not exist, or the loop is not running,
    :meth:`park` waits for the socket itself and returns when it is
    readable: the caller's own loop serves it, as it would without one.
    """

    def __init__(
        self, max_events: int = 256, yield_after_flush: bool = True, thread: bool = True, batch_send: bool = True
    ) -> None:
        self.max_events = max_events
        self.yield_after_flush = yield_after_flush
        """Whether the loop gives up the CPU (``sched_yield``) after each batch that sent answers."""
        self.batch_send = batch_send
        """Whether a batch's answers to several sockets go out in one system call where the platform allows."""
        self._sender: BatchSender | None = None  # opened at the first batch with answers for two sockets or more
        self._sender_tried = False
        self.thread = thread
        """Whether the loop may run in a thread of its own (under trio's own clock; see the class)."""
        self.threaded = False
        """Whether the running loop is a thread (from the first :meth:`park` on)."""
        self.now: Callable[[], float] = trio.current_time
        """trio's clock, readable from the loop's thread: what ``serve()`` uses for "now"."""
        self._epoll = None
        self._first_park: trio.Event | None = None  # set by the first park: the thread starts then
        self._lock = threading.Lock()
        self._wake: Callable[[trio.lowlevel.Task, outcome.Outcome], None] = trio.lowlevel.reschedule
        self._parked: dict[int, _Parked] = {}
        self._done = threading.Condition(threading.Lock())
        self._finished = 0  # batches finished, under _done
        self._waiting = 0  # event-loop callers of give_way waiting on _done
        self.busy_poll = DEFAULT_BUSY_POLL
        """The longest the loop's thread polls for the next request before it sleeps, in seconds (0: never polls)."""
        self.batches = 0
        """Batches served (wake-ups of the loop): with :attr:`served`, how much one wake-up did."""
        self.served = 0
        """``serve()`` calls that kept their connection parked."""
        self.polled = 0
        """Batches the thread found while it polled (:attr:`busy_poll`), before it would have slept."""
        self.batch_sends = 0
        """Batches whose answers went out in one system call (:mod:`trionet.batchsend`)."""

    @property
    def parked(self) -> int:
        """Connections parked now."""
        return len(self._parked)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve parked sockets until cancelled; then wake every parked task, which goes on alone."""
        if not hasattr(select, "epoll"):
            task_status.started()
            await trio.sleep_forever()
        clock = trio.lowlevel.current_clock()
        self.now = clock.current_time
        # trio.testing is not imported for this (it costs a server about
        # 0.15 s at start-up): a MockClock can only come from it once loaded.
        testing = sys.modules.get("trio.testing")
        threaded = self.thread and not (testing is not None and isinstance(clock, testing.MockClock))
        epoll = select.epoll()
        try:
            if threaded:
                await self._run_thread(epoll, task_status)
            else:
                self._epoll = epoll
                task_status.started()
                await self._run_task(epoll)
        finally:
            self._first_park = None
            with self._lock:
                self._epoll = None
                self.threaded = False
                self._wake = trio.lowlevel.reschedule
                for fd, entry in list(self._parked.items()):
                    self._unpark(fd, epoll)
                    trio.lowlevel.reschedule(entry[0], outcome.Value(False))
                if self._sender is not None:
                    self._sender.close()
                    self._sender = None
                self._sender_tried = False
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()

    async def _run_task(self, epoll) -> None:
        # The loop as a trio task: one wait_readable on the set per batch.
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            self._batch(epoll.poll(0, self.max_events), -1)

    async def _run_thread(self, epoll, task_status) -> None:
        # The loop as a thread; this task waits for it and stops it: a byte
        # on the wake pipe (in the set) ends it, and the task returns (or is
        # cancelled) only once the thread has. The thread starts at the
        # first park: a service whose connections never park (names, ring,
        # metrics) never has one. Parks before then go in the set already.
        first_park = self._first_park = trio.Event()
        with self._lock:
            self._epoll = epoll
        task_status.started()
        await first_park.wait()
        token = trio.lowlevel.current_trio_token()
        ended = trio.Event()
        result: list[outcome.Outcome] = []
        wake_r, wake_w = os.pipe()

        def deliver(value: outcome.Outcome) -> None:  # in the thread, as it ends
            result.append(value)
            token.run_sync_soon(ended.set)

        try:
            epoll.register(wake_r, select.EPOLLIN)
            with self._lock:
                self.threaded = True
                self._wake = lambda task, value: token.run_sync_soon(trio.lowlevel.reschedule, task, value)
            trio.lowlevel.start_thread_soon(
                lambda: self._thread_loop(epoll, wake_r), deliver, name="trionet ready loop"
            )
            try:
                await ended.wait()
            finally:
                os.write(wake_w, b"x")
                with trio.CancelScope(shield=True):
                    await ended.wait()
            result[0].unwrap()  # the loop's own failure (never a connection's: those go to its task)
            raise RuntimeError("the ready loop's thread ended")  # it ends only when told to
        finally:
            os.close(wake_r)
            os.close(wake_w)

    def _thread_loop(self, epoll, wake_fd: int) -> None:
        max_events = self.max_events
        clock = time.perf_counter
        window = 0.0  # how long to poll before sleeping: adapted to the gaps seen (poll_window)
        parked = self._parked
        while True:
            events = None
            if window and len(parked) <= POLL_MOST_PARKED:
                until = clock() + window
                while True:
                    events = epoll.poll(0, max_events)  # (the GIL is released in each)
                    if events or clock() >= until:
                        break
                    # Polite: a process waiting for this CPU (the client
                    # itself, on a small machine) runs first.
                    _sched_yield()
                if events:
                    self.polled += 1
            if not events:
                start = clock()
                events = epoll.poll(-1, max_events)  # the GIL is released while it waits
                window = poll_window(window, window + clock() - start, self.busy_poll)
            if not self._batch(events, wake_fd):
                return

    def _batch(self, events: list[tuple[int, int]], wake_fd: int) -> bool:
        """Serve one batch of ready sockets, then send their answers; False if told to stop (``wake_fd`` was ready)."""
        self.batches += 1
        parked = self._parked
        lock = self._lock
        answered = []
        for fd, _ in events:
            if fd == wake_fd:
                return False
            with lock:
                entry = parked.get(fd)
                if entry is not None and self._turn(fd, entry[0], entry[1]):
                    self.served += 1
                    if entry[2]:
                        answered.append((fd, entry))
        # Then the answers go out together, as the course's loop sends its
        # queued replies after handling every readable socket: a client
        # with many connections (pgbench's threads) finds several answers
        # at each wake-up instead of one.
        if answered:
            self._send(answered)
        with self._done:  # (uncontended but for give_way: about 0.1 µs a batch)
            self._finished += 1
            if self._waiting:
                self._done.notify_all()
        if answered and self.yield_after_flush:
            # The answers just sent woke their clients. On a shared machine
            # (a load generator beside the server, two workers on two cores)
            # yielding now lets them run and send their next requests before
            # this loop looks again: one bigger batch, instead of being
            # preempted by the woken clients and woken again for each
            # request (docs/benchmarks.md). With nothing else runnable the
            # call returns at once.
            _sched_yield()
        return True

    def give_way(self) -> None:
        """At a checkpoint of a task that goes on without waiting: let the loop's thread serve the sockets ready first.

        For the event loop's thread only, right before
        ``trio.lowlevel.checkpoint()`` in a loop that handles a pipelining
        client's requests one after the other. The checkpoint lets trio's
        other tasks run, but not the loop's thread: that one runs only when
        it wins the GIL, which the event loop, busy with the pipeline, gives
        up only every ``sys.getswitchinterval()`` (5 ms, a hundred requests).
        So when the loop runs as a thread and its set has a socket ready,
        this waits (the GIL released) until the thread has finished a batch,
        at most :data:`GIVE_WAY_TIMEOUT`: each pipelined request then lets
        the parked connections have one turn, as the task loop does. It
        costs one ``epoll_wait`` that does not wait when the loop is a
        thread, and nothing when it is a task.
        """
        epoll = self._epoll
        if not self.threaded or epoll is None:
            return
        done = self._done
        with done:
            seen = self._finished  # read first: a batch that ends after the look below must count
            try:
                if not epoll.poll(0, 1):
                    return
            except (OSError, ValueError):
                return  # closed by run() as it ended
            self._waiting += 1
            try:
                done.wait_for(lambda: self._finished != seen, GIVE_WAY_TIMEOUT)
            finally:
                self._waiting -= 1

    async def park(self, sock, serve: Callable[[], bool], out: bytearray | None = None) -> bool:
        """Wait until ``serve()`` hands the connection back (returns False or raises); see the class.

        Returns True when ``serve()`` handed it back; False when this only
        waited until ``sock`` was readable (no loop running) or the loop
        stopped: the caller reads the socket itself then.

        Args:
            sock: the connection's socket (anything with ``fileno()``),
                readable or not; the loop calls ``serve()`` each time it is.
            serve: called by the loop when ``sock`` is readable; True to
                stay parked.
            out: the connection's pending answers, where ``serve()`` puts
                them: the loop sends them after every ``serve()`` of the
                batch (answers computed first, sent together), deleting what
                the socket took. If the socket does not take all of it, the
                connection goes back to its task (True), the rest in ``out``.

        Raises:
            whatever ``serve()`` raised, or the error of sending ``out`` (a
            reset peer); ``trio.Cancelled`` when the task's scope is
            cancelled (the socket has then left the set).
        """
        epoll = self._epoll
        if epoll is None:
            await trio.lowlevel.wait_readable(sock)
            return False
        fd = sock.fileno()
        entry = (trio.lowlevel.current_task(), serve, out, sock)
        with self._lock:
            self._parked[fd] = entry  # before the set: the thread may see the socket ready at once
            epoll.register(fd, select.EPOLLIN)
        first_park = self._first_park
        if first_park is not None:
            self._first_park = None
            first_park.set()  # the loop's thread starts

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            with self._lock:  # waits out a serve() or a send of this connection under way
                if self._parked.get(fd) is not entry:
                    # The loop handed it back meanwhile: that wake-up is on
                    # its way, and the cancellation reaches the task at its
                    # next checkpoint.
                    return trio.lowlevel.Abort.FAILED
                self._unpark(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _send(self, answered: list[tuple[int, _Parked]]) -> None:
        """Send the answers of a batch's connections (each lock-held): all in one system call when there are several."""
        lock, parked = self._lock, self._parked
        if len(answered) > 1 and self.batch_send:
            sender = self._sender
            if sender is None and not self._sender_tried:
                self._sender_tried = True
                sender = self._sender = BatchSender.open()
            if sender is not None:
                with lock:
                    # fileno() now, not the number parked: a socket closed
                    # meanwhile is -1, and its task is the one to hear of it.
                    items = [
                        (fd, entry[2])
                        for fd, entry in answered
                        if parked.get(fd) is entry and entry[3].fileno() == fd
                    ]  # (a task cancelled meanwhile sends its own answers)
                    if items and sender.send(items):
                        self.batch_sends += 1
        # Each connection whose answers are not all sent yet (one alone, a
        # full send buffer, an error): its own write, which hands it back
        # with the rest, or with the error.
        for fd, entry in answered:
            if entry[2]:
                with lock:
                    if parked.get(fd) is entry:
                        self._turn(fd, entry[0], _write_some, entry[3], entry[2])

    def _turn(self, fd: int, task: trio.lowlevel.Task, step: Callable[..., bool], *args) -> bool:
        """Call ``step(*args)`` for a parked connection, its ``serve`` or a write of its ``out`` (lock held).

        True: it stays parked; else (False, or an exception: the
        connection's error, not the loop's) its task has it back.
        """
        try:
            if step(*args):
                return True
            result = outcome.Value(True)
        except Exception as exc:  # the connection's error, not the loop's
            result = outcome.Error(exc)
        self._unpark(fd)
        self._wake(task, result)
        return False

    def _unpark(self, fd: int, epoll=None) -> None:
        del self._parked[fd]
        epoll = epoll or self._epoll
        if epoll is not None:
            try:
                epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # closed meanwhile: the kernel dropped it from the set already


class ParkedServer:
    """What a connection parked in a :class:`ReadyLoop` does when its socket is readable: its ``serve``.

    One read (:meth:`DirectSocketIO.read_ready`) into the connection's
    sans-IO core, then each complete event offered to ``answer``, which
    either answers it at once (into ``out``) or says no; then, once the
    loop has served its whole batch, the loop sends :attr:`out`. The
    connection goes back to its task (:meth:`serve` returns False, or the
    loop's send hands it back) with the first event ``answer`` refused or that came past
    ``burst`` answers from one read (:meth:`take_handback`), at EOF (which
    the core reports as an event), when the socket did not take all of
    ``out`` (the rest stays in it, for the task to send under its send
    watchdog), or when ``draining`` is set. Everything ``answer`` answered is
    in ``out``, in order, before the event handed back.

    Args:
        io: the connection's direct socket I/O.
        framer: its sans-IO core (``receive_data``, ``next_event``).
        answer: ``answer(event) -> bool``, in the loop's task: answer
            ``event`` into ``out`` at once, or return False having done
            nothing.
        out: the connection's pending answers.
        draining: set when the server drains.
        answered: called after a read that answered something (the idle
            clock starts again).
        burst: the most events answered from one read: a pipelining client
            goes on with its task's checkpoints.
    """

    __slots__ = ("_io", "_framer", "_answer", "_out", "_draining", "_answered", "_burst", "_handback", "_tried")

    def __init__(
        self,
        io: DirectSocketIO,
        framer,
        answer: Callable[[object], bool],
        out: bytearray,
        draining: trio.Event,
        answered: Callable[[], None],
        burst: int,
    ) -> None:
        self._io = io
        self._framer = framer
        self._answer = answer
        self._out = out
        self._draining = draining
        self._answered = answered
        self._burst = burst
        self._handback = None
        self._tried = False  # whether answer refused the event handed back

    def serve(self) -> bool:
        """The ready loop's ``serve``: read once and answer what can be answered now; False hands the connection back."""
        framer = self._framer
        if not self._io.read_ready(framer):
            return True  # nothing after all
        answer = self._answer
        count = 0
        while True:
            event = framer.next_event()
            if event is NEED_DATA:
                break
            if count == self._burst:
                self._handback, self._tried = event, False
                break
            if not answer(event):
                self._handback, self._tried = event, True
                break
            count += 1
        if count:
            self._answered()
        return self._handback is None and not self._draining.is_set()

    @property
    def out(self) -> bytearray:
        """The connection's pending answers: what to park with (:meth:`ReadyLoop.park`'s ``out``)."""
        return self._out

    def take_handback(self) -> tuple[object | None, bool]:
        """The event :meth:`serve` handed back (or None), and whether ``answer`` may still be tried on it."""
        event, self._handback = self._handback, None
        return event, not self._tried
