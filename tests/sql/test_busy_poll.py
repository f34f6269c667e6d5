"""``trionet sql serve --busy-poll-us``: the flag reaches the ready loops of the real command."""

from __future__ import annotations

import pytest

try:
    import psycopg
except ImportError:  # the test extra installs it; a developer without it skips, CI fails
    psycopg = None


@pytest.mark.requires_module("psycopg")
@pytest.mark.parametrize(("micros", "polls"), [("10000", True), ("0", False)])
def test_a_client_querying_back_to_back_is_answered_while_the_loop_polls_unless_told_not_to(
    server_process, quake_db, scrape_metrics, micros, polls
):
    # 10 ms: far longer than psycopg takes between two queries, even on a
    # loaded machine, so nearly every request after the first few is found
    # while the loop's thread still polls. With 0 it never polls.
    server = server_process(
        "sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0", "--busy-poll-us", micros,
        "--metrics", "127.0.0.1:0",
    )  # fmt: skip
    port = int(server.wait_for(r"pg listening on 127\.0\.0\.1:(\d+)").group(1))
    metrics_port = int(server.wait_for(r"metrics listening on 127\.0\.0\.1:(\d+)").group(1))
    with psycopg.connect(f"host=127.0.0.1 port={port} dbname=quakes connect_timeout=10", autocommit=True) as conn:
        for _ in range(60):  # prepared after psycopg's fifth: then the loop's fast path answers each
            assert conn.execute("select count(*) from quakes where mag > %s", (5,)).fetchone()[0] >= 0
    polled = scrape_metrics(metrics_port)[("trionet_ready_loop_polled_total", (("listener", "pg"),))]
    if polls:
        assert polled >= 20
    else:
        assert polled == 0
