"""Metrics for every service: a Prometheus registry, served at ``/metrics`` over trio, logged on SIGUSR1.

The exposition format is ``prometheus_client``'s (:func:`generate_latest`);
nothing here writes it by hand. What a service counts it keeps in plain
attributes on its own objects (the hot path pays for an integer increment at
most); a *collector* reads them when someone scrapes, so no measuring code
runs between scrapes. Latency histograms are the exception: they are
observed per request, with ``prometheus_client``'s own ``Histogram``.

The endpoint is a small HTTP/1.1 server on a :class:`~trionet.serving.TCPService`:
one ``GET /metrics`` per connection, a request head of at most
:data:`MAX_REQUEST_HEAD` bytes read within :data:`REQUEST_TIMEOUT` seconds,
then the answer and the close. It runs in the service's own trio loop, so a
scrape costs no thread (``prometheus_client.start_http_server`` starts one
per connection), and a client that never finishes its request holds nothing
for long.

Example::

    registry = new_registry()
    registry.register(ServiceCollector([server.service]))
    await nursery.start(serve_metrics, registry, "127.0.0.1", 9100)
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from trionet.serving import Connection, TCPService

__all__ = [
    "MAX_REQUEST_HEAD",
    "REQUEST_TIMEOUT",
    "FunctionCollector",
    "MetricsEndpoint",
    "ServiceCollector",
    "http_response",
    "merge_families",
    "new_registry",
    "serve_metrics",
    "summary_lines",
]

MAX_REQUEST_HEAD = 8192
"""Bytes of request line and headers read; a longer head is answered 431."""
REQUEST_TIMEOUT = 10.0
"""Seconds a scraper may take to send its request head."""


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector metrics (CPU, memory, descriptors)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ServiceCollector(Collector):
    """Connections and requests of TCP services, read from the services at scrape time.

    Args:
        services: the listeners of one server (names has two: the line port and the DNS port).
    """

    def __init__(self, services: Iterable[TCPService]) -> None:
        self._services = list(services)

    def collect(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily("trionet_connections_open", "Connections open now.", labels=["listener"])
        total = CounterMetricFamily("trionet_connections", "Connections accepted.", labels=["listener"])
        requests = CounterMetricFamily(
            "trionet_requests", "Requests read from clients (connections still open included).", labels=["listener"]
        )
        wakeups = CounterMetricFamily(
            "trionet_ready_loop_wakeups",
            "Wake-ups of the listener's ready loop (each serves every parked connection with something to read).",
            labels=["listener"],
        )
        answered = CounterMetricFamily(
            "trionet_ready_loop_answers",
            "Reads the ready loop answered without waking the connection's task; per wake-up, how much it batched.",
            labels=["listener"],
        )
        polled = CounterMetricFamily(
            "trionet_ready_loop_polled",
            "Wake-ups of the ready loop that found their requests while it was still polling for them "
            "(--busy-poll-us), so it neither slept nor was woken.",
            labels=["listener"],
        )
        batch_sends = CounterMetricFamily(
            "trionet_ready_loop_batch_sends",
            "Wake-ups of the ready loop whose answers to several connections went out in one system call "
            "(Linux's io_submit), so a client woken by the first found the rest there too.",
            labels=["listener"],
        )
        for service in self._services:
            open_.add_metric([service.name], len(service.connections))
            total.add_metric([service.name], service.accepted_total)
            live = sum(conn.requests for conn in service.connections)
            requests.add_metric([service.name], service.requests_closed_total + live)
            wakeups.add_metric([service.name], service.ready.batches)
            answered.add_metric([service.name], service.ready.served)
            polled.add_metric([service.name], service.ready.polled)
            batch_sends.add_metric([service.name], service.ready.batch_sends)
        moved = CounterMetricFamily(
            "trionet_connections_moved",
            "Connections a worker moved to the worker of their client's CPU (direction=out) or took from another "
            "(direction=in); --workers above 1 with --placement cpu.",
            labels=["listener", "direction"],
        )
        for service in self._services:
            if service.placer is not None:
                moved.add_metric([service.name, "out"], service.placer.moved_out)
                moved.add_metric([service.name, "in"], service.placer.moved_in)
        yield from (open_, total, requests, wakeups, answered, polled, batch_sends, moved)


class FunctionCollector(Collector):
    """Metrics computed by a function at scrape time: for a service's own counters and gauges."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


def http_response(head: bytes, registry: CollectorRegistry) -> bytes:
    """The whole HTTP response to one request head (sans-IO: no sockets).

    ``GET /metrics`` (or ``HEAD``; a query string is ignored) gets the
    exposition; ``/`` a pointer to it; any other path 404, any other method
    405, a line that is not HTTP 400.
    """
    request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response(400, b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
    if target == b"/metrics":
        body = generate_latest(registry)
        return _response(200, b"" if method == b"HEAD" else body, CONTENT_TYPE_LATEST.encode(), len(body))
    if target == b"/":
        return _response(200, b"trionet: metrics at /metrics\n")
    return _response(404, b"not found: try /metrics\n")


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            408: b"Request Timeout", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error"}  # fmt: skip


def _response(
    status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8", length: int | None = None,
    extra: bytes = b"",
) -> bytes:  # fmt: skip
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
        % (status, _REASONS[status], content_type, len(body) if length is None else length, extra)
    )
    return head + body


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    logger: logging.Logger | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` at ``http://HOST:PORT/metrics`` until cancelled; reports the bound addresses.

    Error handling:
        A request head over :data:`MAX_REQUEST_HEAD` bytes gets 431, one not
        complete within :data:`REQUEST_TIMEOUT` seconds gets 408; either way
        the connection closes. A failure to listen raises
        :class:`~trionet.serving.ListenError`.
    """
    log = logger or logging.getLogger("trionet.metrics")

    async def handle(conn: Connection) -> None:
        head = b""
        with trio.move_on_after(REQUEST_TIMEOUT) as timer:
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                if len(head) > MAX_REQUEST_HEAD:
                    await conn.stream.send_all(_response(431, b"request head too large\n"))
                    return
                data = await conn.stream.receive_some(4096)
                if not data:
                    return
                head += data
        if timer.cancelled_caught:
            with trio.move_on_after(1):
                await conn.stream.send_all(_response(408, b"request head not received in time\n"))
            return
        conn.requests += 1
        await conn.stream.send_all(http_response(head, registry))

    service = TCPService("metrics", handle, log, quiet=True)
    await service.serve(host, port, task_status=task_status)


MAX_ENDPOINT_CONNECTIONS = 16
"""Scrapers a :class:`MetricsEndpoint` serves at once; one more is closed at once."""


@dataclass
class _Scrape:
    sock: socket.socket
    deadline: float
    head: bytes = b""
    out: bytes | None = None  # the response not sent yet, once the head is complete


@dataclass
class MetricsEndpoint:
    """``/metrics`` without an event loop: for a process that must not run trio (the workers' supervisor).

    Same answers and bounds as :func:`serve_metrics` (a head of at most
    :data:`MAX_REQUEST_HEAD` bytes within :data:`REQUEST_TIMEOUT` seconds,
    one request per connection), on non-blocking sockets the owner polls:
    it calls :meth:`step` whenever one of them may be ready (``watch(sock)``
    is called on each socket so the owner can learn that, e.g. by SIGIO) and
    again by the deadline :meth:`step` returns. Nothing in it blocks, except
    collecting ``registry`` itself, which is the owner's to bound.

    Args:
        listeners: bound, listening sockets (made non-blocking here).
        registry: what ``GET /metrics`` exposes.
        watch: called on each listener and accepted connection.
    """

    listeners: list[socket.socket]
    registry: CollectorRegistry
    watch: Callable[[socket.socket], None] = lambda sock: None
    scrapes: list[_Scrape] = field(default_factory=list)

    def __post_init__(self) -> None:
        for sock in self.listeners:
            sock.setblocking(False)
            self.watch(sock)

    def step(self, now: float) -> float:
        """Accept, read, answer and write what is ready now; returns when to call again at the latest."""
        for listener in self.listeners:
            self._accept(listener, now)
        for scrape in list(self.scrapes):
            if not self._advance(scrape, now):
                scrape.sock.close()
                self.scrapes.remove(scrape)
        return min((s.deadline for s in self.scrapes), default=math.inf)

    def close(self) -> None:
        """Close every socket (the listeners too)."""
        for sock in self.listeners + [s.sock for s in self.scrapes]:
            sock.close()
        self.scrapes.clear()

    def _accept(self, listener: socket.socket, now: float) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED, EMFILE: this one is lost, the endpoint goes on
                return
            if len(self.scrapes) >= MAX_ENDPOINT_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            self.watch(sock)
            self.scrapes.append(_Scrape(sock, now + REQUEST_TIMEOUT))

    def _advance(self, scrape: _Scrape, now: float) -> bool:
        """Move one connection on; False once it is done with (answered, refused, gone or too slow)."""
        try:
            if scrape.out is None:
                while b"\r\n\r\n" not in scrape.head and b"\n\n" not in scrape.head:
                    if len(scrape.head) > MAX_REQUEST_HEAD:
                        scrape.sock.send(_response(431, b"request head too large\n"))
                        return False
                    if now >= scrape.deadline:
                        scrape.sock.send(_response(408, b"request head not received in time\n"))
                        return False
                    try:
                        data = scrape.sock.recv(4096)
                    except BlockingIOError:
                        return True
                    if not data:
                        return False
                    scrape.head += data
                try:
                    scrape.out = http_response(scrape.head, self.registry)
                except Exception:  # a collector's bug must not end the process that serves this
                    logging.getLogger("trionet.metrics").exception("collecting the metrics failed")
                    scrape.out = _response(500, b"collecting the metrics failed: see the server's log\n")
                scrape.deadline = now + REQUEST_TIMEOUT  # to take the answer
            while scrape.out:
                if now >= scrape.deadline:
                    return False
                try:
                    sent = scrape.sock.send(scrape.out)
                except BlockingIOError:
                    return True
                scrape.out = scrape.out[sent:]
        except OSError:
            return False
        return False


def merge_families(own: Iterable[Metric], others: Mapping[str, str], label: str) -> list[Metric]:
    """One family per name from this process's metrics and other processes' expositions, told apart by ``label``.

    ``others`` maps a label value (a worker's index) to that process's
    exposition text; each of its samples gets ``label="VALUE"``. This
    process's own samples keep their labels. A name that two processes give
    different types keeps the first one's, and the other's samples are left
    out (the exposition must not name a family twice).
    """
    merged: dict[str, Metric] = {}

    def add(family: Metric, extra: dict[str, str]) -> None:
        target = merged.get(family.name)
        if target is None:
            target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        elif target.type != family.type:
            return
        target.samples.extend(s._replace(labels={**s.labels, **extra}) for s in family.samples)

    for family in own:
        add(family, {})
    for value, text in others.items():
        for family in text_string_to_metric_families(text):
            add(family, {label: value})
    return list(merged.values())


def summary_lines(registry: CollectorRegistry) -> list[str]:
    """The registry's samples as ``name{labels} value`` lines, for one log block (SIGUSR1).

    Histogram buckets are left out (their count and sum stay): a person
    reading the log wants the figures, not the distribution.
    """
    lines = []
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket") or sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            value = int(sample.value) if float(sample.value).is_integer() else round(sample.value, 6)
            lines.append(f"{sample.name}{{{labels}}} {value}" if labels else f"{sample.name} {value}")
    return lines
