"""Several worker processes behind the same ports: the listeners, the supervisor, a worker's view.

A server started with ``--workers N`` runs N copies of itself, each a whole
trio server in its own process (own event loop, own SQLite connections), so
N cores work at once. The supervisor is the process the user started; it
never runs trio, so it can ``fork`` a fresh worker at any time.

Listeners: the supervisor binds, for each port, one socket **per worker**,
all with ``SO_REUSEPORT`` on the same address (the first one picks the port
when 0 is asked, the others join it), and worker ``i`` inherits socket
``i`` of each port. The kernel spreads new connections over the group by a
hash of the addresses, evenly, where one shared accept queue tends to feed
whichever worker woke last (measured with pgbench: see docs/benchmarks.md).
Binding in the supervisor means a port in use fails once, before any
worker starts, and the real port of ``--port 0`` is logged once. The
supervisor keeps its own copy of every socket, so when a worker dies the
connections the kernel already queued for it wait for its successor
instead of being reset, and no other process can take the port meanwhile.

Supervision: a worker that exits while the server is not stopping is
started again, after a pause that doubles with each quick death
(:class:`RestartPolicy`; logged). SIGTERM and SIGINT are forwarded to every
worker as SIGTERM (each drains within its grace period) and the supervisor
exits once all have; a second one is forwarded too (the workers then stop at
once), and a worker still alive ``grace`` + :data:`KILL_MARGIN` seconds after
the first is killed. SIGUSR1 is forwarded (each worker logs its own
figures); SIGHUP is forwarded when the service reloads on it, else it keeps
its default action, as in a single process. Workers run in their own process
group (a terminal's Ctrl-C reaches only the supervisor, which forwards it
once) and hold the read end of a pipe only the supervisor writes to: if the
supervisor dies, even by SIGKILL, the pipe reads EOF and the workers drain
and exit (:func:`watch_lifeline`).

Moving connections (``placement=True``, :mod:`trionet.placement`): the
supervisor also makes, before the first fork, a
:class:`~trionet.placement.LoadBoard` (anonymous shared memory: each
worker's open connections per port, and what its connections want at each
look) and, for every worker, a ``SOCK_SEQPACKET`` socket pair through which
the others hand it a connection's descriptor and state. It keeps both ends
of each pair, so a connection handed to a worker that just died waits for its
successor, and it marks a dead worker's loads gone until the successor
serves.

Messages between workers (a PostgreSQL CancelRequest that reached the wrong
one): every worker has a mailbox, a datagram socket pair made by the
supervisor before the first fork; every worker inherits the sending ends of
all mailboxes and the receiving end of its own.

Metrics (``--metrics``): the supervisor serves ``/metrics`` itself, so one
address shows every worker. Each worker's samples are its own registry's
exposition, fetched at scrape time over a stream socket pair the supervisor
makes before each fork of that worker (its *scrape channel*: the worker
keeps one end, the supervisor the other): the supervisor writes a scrape
number, the worker answers it with the number and its exposition text
(:func:`answer_scrapes`), and the supervisor gives each of that worker's
samples the label ``worker="INDEX"`` (:func:`trionet.metrics.merge_families`).
A worker that does not answer within :data:`SCRAPE_TIMEOUT` seconds (dead,
restarting, or stuck) is left out of that scrape, which says so with
``trionet_worker_up{worker="INDEX"} 0``; an answer that comes later is
recognised by its number and dropped. The supervisor stays one thread
without trio: the endpoint's sockets raise SIGIO
(``O_ASYNC``), which the supervisor waits for with the other signals, and a
scrape holds its loop for at most :data:`SCRAPE_TIMEOUT` seconds.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from trionet.placement import LoadBoard, Placer, available

__all__ = [
    "KILL_MARGIN",
    "SCRAPE_TIMEOUT",
    "Listen",
    "RestartPolicy",
    "WorkerContext",
    "answer_scrapes",
    "bind_reuseport",
    "resolve_workers",
    "supervise",
    "watch_lifeline",
]

KILL_MARGIN = 5.0
"""Seconds past ``grace`` after the first stop signal at which a worker still alive is killed."""
LISTEN_BACKLOG = 4096
MAX_WORKERS = 256
"""A PostgreSQL backend key carries the worker's index in its low byte."""
SCRAPE_TIMEOUT = 1.0
"""Seconds the supervisor waits for the workers' figures when ``/metrics`` is scraped."""

_SCRAPE = struct.Struct("!I")  # supervisor -> worker: the scrape's number
_SCRAPE_ANSWER = struct.Struct("!II")  # worker -> supervisor: the number, then the length of the text that follows


def resolve_workers(value: str) -> int:
    """``--workers`` as given: a count from 1 to :data:`MAX_WORKERS`, or ``auto`` for one per core.

    Raises:
        ValueError: anything else, with a message for the user.
    """
    if value.strip().lower() == "auto":
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a number nor 'auto'") from None
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"{count} is not between 1 and {MAX_WORKERS}")
    return count


@dataclass(frozen=True)
class Listen:
    """One port the workers share: its name in the log (``sql``, ``pg``), host and port (0: any free one)."""

    name: str
    host: str
    port: int


def bind_reuseport(
    host: str, port: int, count: int, backlog: int = LISTEN_BACKLOG, *, reuseport: bool = True
) -> list[list[socket.socket]]:
    """Bind ``count`` listening TCP sockets per address of ``host``, all on one port with ``SO_REUSEPORT``.

    (``reuseport=False`` for a port only this process serves, with ``count`` 1:
    then no other process can join it.)

    Returns one list per worker, each with a socket for every address
    ``host`` resolves to (as ``trio.open_tcp_listeners`` binds them). With
    ``port`` 0 the first socket of each address picks a free port and the
    others join it.

    Error handling: the ``OSError`` of a failed bind (the port in use, an
    address not of this machine) is raised after closing what was bound.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    per_worker: list[list[socket.socket]] = [[] for _ in range(count)]
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            bound = address
            for index in range(count):
                sock = socket.socket(family, kind, proto)
                per_worker[index].append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuseport:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(bound)
                sock.listen(backlog)
                bound = sock.getsockname()
    except OSError:
        for socks in per_worker:
            for sock in socks:
                sock.close()
        raise
    return per_worker


class RestartPolicy:
    """How long to wait before starting a worker again: sans-IO, time passed in.

    The first death of a worker that had run at least ``stable`` seconds is
    answered at once (after ``first``); each quick death after that doubles
    the pause, up to ``ceiling``, so a worker that cannot start does not spin.
    """

    def __init__(self, *, first: float = 0.1, ceiling: float = 10.0, stable: float = 30.0) -> None:
        self.first = first
        self.ceiling = ceiling
        self.stable = stable
        self._pause: dict[int, float] = {}

    def delay(self, index: int, started: float, died: float) -> float:
        """Seconds to wait before restarting worker ``index``, which ran from ``started`` to ``died``."""
        previous = self._pause.get(index)
        if previous is None or died - started >= self.stable:
            pause = self.first
        else:
            pause = min(self.ceiling, previous * 2)
        self._pause[index] = pause
        return pause


@dataclass
class WorkerContext:
    """What a worker process is given: who it is, its listeners, the mailboxes, the lifeline.

    Attributes:
        index: 0 .. count-1; kept by the worker that replaces this one.
        count: how many workers the server runs.
        listeners: by :class:`Listen` name, this worker's listening sockets.
        mailbox: this worker's receiving end (a datagram socket).
        mailboxes: the sending ends, by worker index (this one's included).
        lifeline: a pipe's read end that reads EOF when the supervisor is gone.
        scrapes: this worker's end of its scrape channel (:func:`answer_scrapes`);
            None when the server has no ``--metrics``.
        board: the connections each worker serves, per port
            (:class:`~trionet.placement.LoadBoard`); None with ``placement=False``.
        handoff: this worker's receiving end for connections handed to it
            (:func:`~trionet.placement.receive_handoffs`); None likewise.
        handoffs: the sending ends, by worker index.
    """

    index: int
    count: int
    listeners: dict[str, list[socket.socket]]
    mailbox: socket.socket
    mailboxes: list[socket.socket]
    lifeline: int
    scrapes: socket.socket | None = None
    board: LoadBoard | None = None
    handoff: socket.socket | None = None
    handoffs: list[socket.socket] = field(default_factory=list)

    def placer(self, port: str) -> Placer | None:
        """This worker's :class:`~trionet.placement.Placer` for ``port``, or None when placement is off."""
        if self.board is None:
            return None
        return Placer(self.board, port, self.index, self.handoffs)

    def post(self, index: int, message: bytes) -> bool:
        """Send a datagram to worker ``index``'s mailbox without waiting; False if it could not be sent now."""
        try:
            self.mailboxes[index].send(message, socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True


async def watch_lifeline(fd: int, on_lost: Callable[[], None]) -> None:
    """Call ``on_lost()`` once the supervisor is gone (``fd`` reads EOF); runs until then or cancelled."""
    import trio

    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            continue
        if not data:
            on_lost()
            return


async def answer_scrapes(sock: socket.socket, registry) -> None:
    """Answer the supervisor's scrapes on ``sock`` with ``registry``'s exposition; runs until cancelled.

    Returns when the supervisor is gone. Requests that queued up while one was
    being answered get one answer, to the newest (the supervisor has given
    up on the older ones).
    """
    import trio
    from prometheus_client import generate_latest

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    pending = b""
    try:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            pending += data
            whole = len(pending) - len(pending) % _SCRAPE.size
            if not whole:
                continue
            (number,) = _SCRAPE.unpack_from(pending, whole - _SCRAPE.size)
            pending = pending[whole:]
            text = generate_latest(registry)
            await stream.send_all(_SCRAPE_ANSWER.pack(number, len(text)) + text)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


@dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    restart_at: float = math.inf
    restarts: int = 0
    scrapes: socket.socket | None = None  # the supervisor's end of the scrape channel (--metrics)
    answers: bytearray = field(default_factory=bytearray)


@dataclass
class _Supervisor:
    count: int
    listens: list[Listen]
    run: Callable[[WorkerContext], int]
    log: logging.Logger
    grace: float
    forward_hup: bool
    metrics: list[socket.socket] | None = None  # the bound --metrics listeners
    placement: bool = False  # hand connections to the worker of their client's CPU (trionet.placement)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    listeners: dict[str, list[list[socket.socket]]] = field(default_factory=dict)
    workers: list[_Worker] = field(default_factory=list)
    stopping: bool = False
    kill_at: float = math.inf
    signals: frozenset = frozenset()
    old_mask: set = field(default_factory=set)

    def start(self, worker: _Worker) -> None:
        theirs = None
        if self.metrics is not None:  # a fresh channel for each run: nothing a dead one left half-said
            if worker.scrapes is not None:
                worker.scrapes.close()
            worker.scrapes, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            worker.scrapes.setblocking(False)
            worker.answers.clear()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_worker(worker.index, theirs)  # never returns
        if theirs is not None:
            theirs.close()  # so that the worker's death reads as EOF here
        worker.pid, worker.started, worker.restart_at = pid, time.monotonic(), math.inf

    def _become_worker(self, index: int, scrapes: socket.socket | None) -> None:
        code = 1
        try:
            os.setpgid(0, 0)
            for signum in self.signals:
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old_mask)
            os.close(self._lifeline_w)
            mine = {name: groups[index] for name, groups in self.listeners.items()}
            for name, groups in self.listeners.items():
                for other, socks in enumerate(groups):
                    if other != index:
                        for sock in socks:
                            sock.close()
            for other, (receiver, _) in enumerate(self._mailboxes):
                if other != index:
                    receiver.close()
            for other, (receiver, _) in enumerate(self._handoffs):
                if other != index:
                    receiver.close()
            if self._endpoint is not None:
                self._endpoint.close()
            for worker in self.workers:
                if worker.scrapes is not None:
                    worker.scrapes.close()
            _tag_log_records(index)
            context = WorkerContext(
                index=index,
                count=self.count,
                listeners=mine,
                mailbox=self._mailboxes[index][0],
                mailboxes=[sender for _, sender in self._mailboxes],
                lifeline=self._lifeline_r,
                scrapes=scrapes,
                board=self._board,
                handoff=self._handoffs[index][0] if self._handoffs else None,
                handoffs=[sender for _, sender in self._handoffs],
            )
            code = self.run(context)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if exc.code not in (None, 0) and not isinstance(exc.code, int):
                self.log.error("worker %d: %s", index, exc.code)
        except BaseException as exc:  # noqa: BLE001 - a worker must never return into the supervisor's code
            message = getattr(exc, "format_message", None)
            if message is not None:  # a click.ClickException: one line, as a single process says it
                self.log.error("worker %d: %s", index, message())
            else:
                self.log.error("worker %d failed:\n%s", index, "".join(traceback.format_exception(exc)))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)

    def serve(self) -> int:
        self._mailboxes = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(self.count)]
        # Kept here for the whole run, like the mailboxes: a connection handed
        # to a worker that just died waits in its channel for its successor.
        self._handoffs = []
        self._board = None
        if self.placement and self.count > 1 and available():
            self._handoffs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(self.count)]
            self._board = LoadBoard([listen.name for listen in self.listens], self.count)
        self._lifeline_r, self._lifeline_w = os.pipe()
        wanted = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD}
        if self.forward_hup:
            wanted.add(signal.SIGHUP)
        if self.metrics is not None:
            wanted.add(signal.SIGIO)
        self.signals = frozenset(wanted)
        self.old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
        self._endpoint = None
        self._scrape_number = 0
        try:
            if self.metrics is not None:
                self._endpoint = self._open_endpoint(self.metrics)
            self.workers = [_Worker(i) for i in range(self.count)]
            for worker in self.workers:
                self.start(worker)
            self.log.info(
                "%d workers started (pids %s)", self.count, " ".join(str(w.pid) for w in self.workers)
            )
            return self._loop()
        finally:
            for worker in self.workers:
                if worker.pid:
                    _signal(worker.pid, signal.SIGKILL)
            self._reap(final=True)
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old_mask)
            self._close_listeners()
            if self._endpoint is not None:
                self._endpoint.close()
            for worker in self.workers:
                if worker.scrapes is not None:
                    worker.scrapes.close()
            os.close(self._lifeline_w)
            os.close(self._lifeline_r)
            for pair in self._mailboxes + self._handoffs:
                for sock in pair:
                    sock.close()
            if self._board is not None:
                self._board.close()

    def _loop(self) -> int:
        while True:
            self._reap()
            now = time.monotonic()
            endpoint_due = self._endpoint.step(now) if self._endpoint is not None else math.inf
            if self.stopping and not any(w.pid for w in self.workers):
                self.log.info("every worker has stopped")
                return 0
            if now >= self.kill_at:
                for worker in self.workers:
                    if worker.pid:
                        self.log.warning("worker %d (pid %d) still running past the grace: killed", worker.index, worker.pid)
                        _signal(worker.pid, signal.SIGKILL)
                self.kill_at = math.inf
            for worker in self.workers:
                if not self.stopping and not worker.pid and worker.restart_at <= now:
                    self.start(worker)
                    self.log.info("worker %d restarted (pid %d)", worker.index, worker.pid)
            wake = min([self.kill_at, endpoint_due] + [w.restart_at for w in self.workers if not w.pid])
            timeout = max(0.0, min(1.0, wake - time.monotonic()))
            received = signal.sigtimedwait(self.signals, timeout)
            if received is None or received.si_signo in (signal.SIGCHLD, signal.SIGIO):
                continue
            signum = received.si_signo
            if signum in (signal.SIGINT, signal.SIGTERM):
                if not self.stopping:
                    self.stopping = True
                    self.kill_at = time.monotonic() + self.grace + KILL_MARGIN
                    self.log.info(
                        "%s: shutting down %d workers (grace %.1fs)", signal.Signals(signum).name, self.count, self.grace
                    )
                    self._close_listeners()  # the workers' copies are the last: closed as they stop accepting
                else:
                    self.log.info("%s again: stopping the workers now", signal.Signals(signum).name)
                self._forward(signal.SIGTERM)
            else:
                self._forward(signum)

    def _open_endpoint(self, listeners: list[socket.socket]):
        from prometheus_client import CollectorRegistry

        from trionet.metrics import FunctionCollector, MetricsEndpoint, new_registry

        own = new_registry()  # the supervisor's own process figures, without a worker label

        def collect():
            from trionet.metrics import merge_families

            texts = self._scrape_workers()  # first: the families below say who answered
            return merge_families([*own.collect(), *self._worker_families()], texts, "worker")

        registry = CollectorRegistry()
        registry.register(FunctionCollector(collect))
        return MetricsEndpoint(listeners, registry, watch=_raise_sigio)

    def _worker_families(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(
            "trionet_worker_up", f"1 if the worker answered this scrape within {SCRAPE_TIMEOUT:g}s, else 0 "
            "(dead, restarting or stuck: its figures are then absent).", labels=["worker"],
        )  # fmt: skip
        restarts = CounterMetricFamily(
            "trionet_worker_restarts", "Times the worker was started again after it died.", labels=["worker"]
        )
        for worker in self.workers:
            up.add_metric([str(worker.index)], 1 if worker.index in self._answered else 0)
            restarts.add_metric([str(worker.index)], worker.restarts)
        return [up, restarts]

    def _scrape_workers(self) -> dict[str, str]:
        """Every live worker's exposition text by index (as a label value), waiting at most :data:`SCRAPE_TIMEOUT`."""
        self._scrape_number = number = (self._scrape_number + 1) % (1 << 32)
        waiting: dict[int, _Worker] = {}
        for worker in self.workers:
            if worker.pid and worker.scrapes is not None:
                try:
                    worker.scrapes.send(_SCRAPE.pack(number))
                except OSError:  # gone, or so stuck that its channel is full
                    continue
                waiting[worker.scrapes.fileno()] = worker
        texts: dict[str, str] = {}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + SCRAPE_TIMEOUT
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                worker = waiting[fd]
                text = self._read_answer(worker, number)
                if text is not None:
                    if text:
                        texts[str(worker.index)] = text
                    del waiting[fd]
                    poller.unregister(fd)
        for worker in waiting.values():
            self.log.warning(
                "worker %d did not answer the scrape within %.1fs: its figures are left out", worker.index, SCRAPE_TIMEOUT
            )
        self._answered = {int(index) for index in texts}
        return texts

    def _read_answer(self, worker: _Worker, number: int) -> str | None:
        """Read what ``worker`` sent: its text for scrape ``number``; "" if it is gone; None for more to wait."""
        try:
            data = worker.scrapes.recv(1 << 16)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return ""
        buffer = worker.answers
        buffer += data
        while len(buffer) >= _SCRAPE_ANSWER.size:
            answered, length = _SCRAPE_ANSWER.unpack_from(buffer)
            end = _SCRAPE_ANSWER.size + length
            if len(buffer) < end:
                return None
            text = bytes(buffer[_SCRAPE_ANSWER.size : end])
            del buffer[:end]
            if answered == number:  # an older one came too late for its scrape: dropped
                return text.decode()
        return None

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.pid:
                _signal(worker.pid, signum)

    def _reap(self, final: bool = False) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if final else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self.workers:
                if worker.pid == pid:
                    worker.pid = 0
                    if self._board is not None:
                        self._board.gone(worker.index)  # no connection is handed to it until its successor serves
                    if final or self.stopping:
                        break
                    worker.restarts += 1
                    now = time.monotonic()
                    pause = self.policy.delay(worker.index, worker.started, now)
                    worker.restart_at = now + pause
                    self.log.warning(
                        "worker %d (pid %d) %s after %.1fs; restarting it in %.1fs",
                        worker.index, pid, _describe_status(status), now - worker.started, pause,
                    )  # fmt: skip
                    break

    def _close_listeners(self) -> None:
        for groups in self.listeners.values():
            for socks in groups:
                for sock in socks:
                    sock.close()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _raise_sigio(sock: socket.socket) -> None:
    """Have the kernel send this process SIGIO when ``sock`` becomes ready (the supervisor waits for signals)."""
    fcntl.fcntl(sock.fileno(), fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) | os.O_ASYNC)


def _tag_log_records(index: int) -> None:
    """Name the worker in each log line it writes: ``trionet.sql[w1]``."""

    def tag(record: logging.LogRecord) -> bool:
        record.name = f"{record.name}[w{index}]"
        return True

    for handler in logging.getLogger("trionet").handlers:
        handler.addFilter(tag)


def supervise(
    count: int,
    listens: list[Listen],
    run: Callable[[WorkerContext], int],
    *,
    logger: logging.Logger,
    grace: float,
    forward_hup: bool = False,
    metrics: tuple[str, int] | None = None,
    placement: bool = False,
) -> int:
    """Bind the shared ports, fork ``count`` workers that each call ``run(context)``, and supervise them.

    Must be called before any trio run or thread has started in this process
    (it forks). Logs each port once ("NAME listening on HOST:PORT") and the
    workers' pids once; returns 0 after a stop signal once every worker has
    exited.

    Args:
        count: worker processes.
        listens: the ports; each worker gets its own ``SO_REUSEPORT`` socket of each.
        run: the body of a worker, returning its exit status; exceptions are
            logged and exit with 1.
        logger: where the supervisor logs.
        grace: the workers' grace period, to know when to kill a stuck one.
        forward_hup: forward SIGHUP (the service reloads on it); else SIGHUP
            keeps its default action here (and the workers drain once the
            supervisor is gone).
        metrics: ``(host, port)`` where the supervisor serves every worker's
            figures at ``/metrics`` (see the module's docstring); each worker
            must then run :func:`answer_scrapes` on ``context.scrapes``.
        placement: let the workers move connections to the worker of their
            client's CPU (:mod:`trionet.placement`): each worker must then
            give its services ``context.placer(NAME)`` and run
            :func:`~trionet.placement.receive_handoffs` on ``context.handoff``.
            False: connections stay where the kernel's hash put them.

    Error handling: a port that cannot be bound raises
    :class:`~trionet.serving.ListenError` before any worker starts.
    """
    from trionet.addresses import format_address
    from trionet.serving import ListenError

    supervisor = _Supervisor(count, listens, run, logger, grace, forward_hup, placement=placement)
    try:
        for listen in listens:
            try:
                supervisor.listeners[listen.name] = bind_reuseport(listen.host, listen.port, count)
            except OSError as exc:
                raise ListenError(exc, listen.name, (listen.host or "*", listen.port)) from exc
            for sock in supervisor.listeners[listen.name][0]:
                logger.info("%s listening on %s", listen.name, format_address(sock.getsockname()[:2]))
        if metrics is not None:
            try:
                supervisor.metrics = bind_reuseport(*metrics, 1, reuseport=False)[0]
            except OSError as exc:
                raise ListenError(exc, "metrics", (metrics[0] or "*", metrics[1])) from exc
            for sock in supervisor.metrics:
                logger.info("metrics listening on %s", format_address(sock.getsockname()[:2]))
    except BaseException:
        supervisor._close_listeners()
        for sock in supervisor.metrics or []:
            sock.close()
        raise
    return supervisor.serve()
