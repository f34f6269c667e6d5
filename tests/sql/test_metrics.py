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
