"""The name server's metrics: what ``names serve --metrics`` serves and SIGUSR1 logs (see :mod:`trionet.metrics`).

Counts are read from the server's own objects when someone scrapes
(admission, cache, resolver, how sessions ended, what the UDP port did); the two histograms,
admission wait and lookup time, are fed by the observers the server calls
(``on_admitted``, ``on_lookup``), set here.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from trionet.metrics import FunctionCollector, ServiceCollector, new_registry
from trionet.names.server import NamesServer

__all__ = ["names_registry"]

_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, float("inf"))
_LOOKUP_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, float("inf"))


def names_registry(server: NamesServer) -> CollectorRegistry:
    """A registry with the process metrics and ``server``'s admission, cache, upstream and session figures.

    Attaches the server's ``on_admitted`` and ``on_lookup`` observers.
    """
    registry = new_registry()
    services = [server.line_service, server.dns_service]
    if server.dot_service is not None:
        services.append(server.dot_service)
    registry.register(ServiceCollector(services))
    registry.register(FunctionCollector(lambda: _collect(server)))
    waits = Histogram(
        "trionet_names_admission_wait_seconds", "Time admitted clients spent in line.",
        buckets=_WAIT_BUCKETS, registry=registry,
    )  # fmt: skip
    lookups = Histogram(
        "trionet_names_lookup_seconds", "Time to answer one query, by where the answer came from.",
        ["source"], buckets=_LOOKUP_BUCKETS, registry=registry,
    )  # fmt: skip
    server.on_admitted = waits.observe
    server.on_lookup = lambda source, seconds: lookups.labels(source).observe(seconds)
    return registry


def _collect(server: NamesServer) -> Iterator[Metric]:
    admission = server.admission
    yield GaugeMetricFamily("trionet_names_slots_in_use", "Clients being served now.", value=admission.in_use)
    yield GaugeMetricFamily("trionet_names_slots", "Clients served at once at most (--limit).", value=admission.limit)
    yield GaugeMetricFamily("trionet_names_clients_waiting", "Clients waiting in line now.", value=admission.waiting)
    endings = CounterMetricFamily(
        "trionet_names_sessions", "Sessions ended, by bye reason (left: the client went first).", labels=["reason"]
    )
    for reason, count in sorted(server.endings.items()):
        endings.add_metric([reason], count)
    yield endings
    cache = server.cache
    lookups = CounterMetricFamily("trionet_names_cache_lookups", "Cache lookups, by result.", labels=["result"])
    lookups.add_metric(["hit"], cache.stats.hits)
    lookups.add_metric(["miss"], cache.stats.misses)
    yield lookups
    yield GaugeMetricFamily("trionet_names_cache_entries", "Answers in the cache now.", value=len(cache))
    udp = server.udp_stats
    yield CounterMetricFamily(
        "trionet_names_udp_responses", "Responses sent over UDP (truncated ones included).", value=udp.answered
    )
    yield CounterMetricFamily(
        "trionet_names_udp_truncated", "UDP responses truncated (TC) to the client's size.", value=udp.truncated
    )
    dropped = CounterMetricFamily(
        "trionet_names_udp_dropped", "UDP queries dropped unanswered, by reason.", labels=["reason"]
    )
    dropped.add_metric(["busy"], udp.dropped_busy)
    dropped.add_metric(["rate"], udp.dropped_rate)
    yield dropped
    if server.dot_service is not None:
        yield CounterMetricFamily(
            "trionet_names_tls_handshake_failures",
            "DNS-over-TLS clients dropped before admission: handshake failed or took longer than --tls-handshake-timeout.",
            value=server.dot_service.tls_failures_total,
        )
    resolver = getattr(server, "resolver", None)
    if resolver is not None:
        stats = resolver.stats
        yield CounterMetricFamily(
            "trionet_names_upstream_queries", "Queries sent to upstream servers.", value=stats.upstream_queries
        )
        yield CounterMetricFamily(
            "trionet_names_upstream_failures", "Lookups the upstreams failed (SERVFAIL).", value=stats.failures
        )
        yield CounterMetricFamily(
            "trionet_names_lookups_merged", "Queries that joined a lookup already under way.", value=stats.merged
        )
        yield CounterMetricFamily(
            "trionet_names_lookups_refused", "Lookups answered SERVFAIL at once: --max-upstream-lookups were under way.",
            value=stats.refused,
        )  # fmt: skip
        prefetch = CounterMetricFamily(
            "trionet_names_prefetches",
            "Cache entries asked for in the last tenth of their TTL: refreshed in the background, "
            "or skipped because --max-upstream-lookups were under way.",
            labels=["outcome"],
        )
        prefetch.add_metric(["started"], stats.prefetches)
        prefetch.add_metric(["skipped"], stats.prefetches_skipped)
        yield prefetch
