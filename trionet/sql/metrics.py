"""The SQL server's metrics: what ``sql serve --metrics`` serves and SIGUSR1 logs (see :mod:`trionet.metrics`).

Counts are read from the server when someone scrapes; the request latency
histogram is fed by the observer the request runner calls (``on_request``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from trionet.metrics import FunctionCollector, ServiceCollector, new_registry
from trionet.sql.pg.server import PgServer
from trionet.sql.server import SqlServer

__all__ = ["sql_registry"]

_LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, float("inf"))


def sql_registry(server: SqlServer, pg: PgServer | None = None) -> CollectorRegistry:
    """A registry with the process metrics, both ports' connections, and the NDJSON port's requests.

    Attaches the request runner's ``on_request`` observer.
    """
    registry = new_registry()
    registry.register(ServiceCollector([server.service] + ([pg.service] if pg is not None else [])))
    registry.register(FunctionCollector(lambda: _collect(server)))
    registry.register(FunctionCollector(lambda: _collect_access(server, pg)))
    latency = _LatencyHistogram(
        "trionet_sql_request_seconds", "Time to answer one request (NDJSON port), by outcome.", _LATENCY_BUCKETS
    )
    registry.register(FunctionCollector(latency.collect))
    server.runner.on_request = latency.observe
    return registry


class _LatencyHistogram:
    """A histogram by outcome kept in plain lists, read at scrape time.

    ``prometheus_client.Histogram`` takes a lock for its sum and another for
    the bucket on every observation, and ``labels()`` one more: about 2.5 µs
    per request of the NDJSON port's point query (py-spy, docs/benchmarks.md).
    Requests are observed one at a time, under the request runner's lock
    (the ready loop's thread answers requests as well as the event loop),
    so the counts need no lock of their own.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = buckets  # ascending, the last one +inf
        self._counts: dict[str, list[int]] = {}  # per outcome: one count per bucket (not cumulative)
        self._sums: dict[str, float] = {}

    def observe(self, outcome: str, seconds: float) -> None:
        """Count one request's ``seconds`` under ``outcome``."""
        counts = self._counts.get(outcome)
        if counts is None:
            counts = self._counts[outcome] = [0] * len(self._bounds)
            self._sums[outcome] = 0.0
        counts[bisect.bisect_left(self._bounds, seconds)] += 1  # the first bound >= seconds, as Histogram
        self._sums[outcome] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["outcome"])
        for outcome, counts in sorted(self._counts.items()):
            les = [floatToGoString(b) for b in self._bounds]
            family.add_metric([outcome], list(zip(les, itertools.accumulate(counts))), self._sums[outcome])
        yield family


def _collect(server: SqlServer) -> Iterator[Metric]:
    runner = server.runner
    answered = CounterMetricFamily(
        "trionet_sql_requests_answered",
        "Requests answered, by outcome: ok, truncated (--max-rows), or the error code (timeout, interrupted, ...).",
        labels=["outcome"],
    )
    for outcome, count in sorted(runner.outcomes.items()):
        answered.add_metric([outcome], count)
    yield answered
    yield CounterMetricFamily("trionet_sql_rows_sent", "Rows sent to clients.", value=runner.rows_sent)
    places = CounterMetricFamily(
        "trionet_sql_statements", "Read statements by where they ran: inline on the event loop, or "
        "tried inline then moved to a worker thread.", labels=["where"],
    )  # fmt: skip
    places.add_metric(["inline"], runner.inline_runs)
    places.add_metric(["inline_fallback"], runner.inline_fallbacks)
    yield places


def _collect_access(server: SqlServer, pg: PgServer | None) -> Iterator[Metric]:
    fronts = [("sql", server)] + ([("pg", pg)] if pg is not None else [])
    auth = CounterMetricFamily(
        "trionet_sql_auth_failures", "Logins refused with --users (wrong password, unknown user, malformed, "
        "too slow), by port.", labels=["port"],
    )  # fmt: skip
    tls = CounterMetricFamily(
        "trionet_sql_tls_failures", "TLS handshakes that failed or stalled, by port.", labels=["port"]
    )
    for name, front in fronts:
        auth.add_metric([name], front.auth_failures_total)
        tls.add_metric([name], front.service.tls_failures_total)
    yield auth
    yield tls
