"""The SQL server's metrics: requests by outcome, rows sent, latency, read from the server at scrape time."""

from __future__ import annotations

import pytest

from trionet.sql import SqlError, connect
from trionet.sql.metrics import sql_registry


def _samples(registry) -> dict[tuple, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
    }


async def test_the_figures_follow_what_clients_asked(start_sql):
    server, (host, port) = await start_sql(max_rows=10)
    registry = sql_registry(server)
    async with connect(host, port) as conn:
        await conn.query("SELECT id FROM quakes LIMIT 3")
        truncated = await conn.query("SELECT id FROM quakes")  # cut at --max-rows 10
        assert truncated.truncated
        with pytest.raises(SqlError):
            await conn.query("DELETE FROM quakes")  # read_only
    figures = _samples(registry)
    answered = "trionet_sql_requests_answered_total"
    assert figures[(answered, (("outcome", "ok"),))] == 1
    assert figures[(answered, (("outcome", "truncated"),))] == 1
    assert figures[(answered, (("outcome", "read_only"),))] == 1
    assert figures[("trionet_sql_rows_sent_total", ())] == 13
    assert figures[("trionet_sql_request_seconds_count", (("outcome", "ok"),))] == 1
    assert figures[("trionet_connections_total", (("listener", "sql"),))] == 1


def test_the_latency_histogram_counts_as_prometheus_client_does():
    # The lock-free histogram must expose what prometheus_client's Histogram
    # would, for every bucket, on the boundaries too.
    from prometheus_client import CollectorRegistry, Histogram

    from trionet.sql.metrics import _LATENCY_BUCKETS, _LatencyHistogram

    ours = _LatencyHistogram("t_seconds", "doc", _LATENCY_BUCKETS)
    registry = CollectorRegistry()
    theirs = Histogram("t_seconds", "doc", ["outcome"], buckets=_LATENCY_BUCKETS, registry=registry)
    for outcome, seconds in [("ok", 0.0), ("ok", 0.0001), ("ok", 0.00010001), ("ok", 0.001), ("timeout", 30.0),
                             ("timeout", 31.0), ("ok", 0.7), ("busy", 5.0)]:  # fmt: skip
        ours.observe(outcome, seconds)
        theirs.labels(outcome).observe(seconds)

    def samples(metrics):
        return sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for m in metrics
            for s in m.samples
            if not s.name.endswith("_created")
        )

    assert samples(ours.collect()) == samples(registry.collect())
