"""The name server's metrics: admission, sessions by ending, cache, upstream, read at scrape time."""

from __future__ import annotations

import dns.asyncquery
import dns.message
import pytest
import trio

import trionet.names
from trionet.names.metrics import names_registry


def _samples(registry) -> dict[tuple, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
    }


async def _line(stream: trio.abc.Stream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\n"):
            data += await stream.receive_some(1)
    return data


async def test_the_figures_follow_what_clients_did(start_names, tcp):
    server, addrs = await start_names(limit=1, quota=3)
    registry = names_registry(server)
    async with trionet.names.connect(*addrs.line) as first:
        await first.resolve("www.test")  # upstream, then cached
        await first.resolve("www.test")
        second = await tcp(addrs.line)  # waits for the only slot
        assert (await _line(second)).startswith(b"wait 1 ")
        figures = _samples(registry)
        assert figures[("trionet_names_slots_in_use", ())] == 1
        assert figures[("trionet_names_clients_waiting", ())] == 1
        await first.resolve("www.test")  # the third: quota reached, the slot goes to `second`
        with pytest.raises(trionet.names.QuotaReached):
            await first.resolve("www.test")
    assert (await _line(second)).startswith(b"welcome ")
    await second.send_all(b"www.test\n")
    assert (await _line(second)).startswith(b"ok www.test A ")
    await second.aclose()
    with trio.fail_after(10):
        while server.admission.in_use or sum(server.endings.values()) < 2:
            await trio.sleep(0.01)
    figures = _samples(registry)
    assert figures[("trionet_names_sessions_total", (("reason", "quota-reached"),))] == 1
    assert figures[("trionet_names_sessions_total", (("reason", "left"),))] == 1
    assert figures[("trionet_names_cache_lookups_total", (("result", "hit"),))] == 3
    assert figures[("trionet_names_upstream_queries_total", ())] == 1
    assert figures[("trionet_names_cache_entries", ())] == 1
    assert figures[("trionet_names_admission_wait_seconds_count", ())] == 2
    assert figures[("trionet_names_lookup_seconds_count", (("source", "dns"),))] == 1
    assert figures[("trionet_names_lookup_seconds_count", (("source", "cache"),))] == 3
    assert figures[("trionet_connections_total", (("listener", "names"),))] == 2


async def test_the_udp_figures(start_names):
    big = "".join(f"10.1.0.{i} big.lan\n" for i in range(1, 61))
    server, addrs = await start_names(hosts="10.0.0.1 gw\n" + big)
    registry = names_registry(server)
    for name in ("gw", "big.lan"):
        query = dns.message.make_query(name, "A")
        await dns.asyncquery.udp(query, addrs.dns[0], port=addrs.dns[1], timeout=5)
    figures = _samples(registry)
    assert figures[("trionet_names_udp_responses_total", ())] == 2
    assert figures[("trionet_names_udp_truncated_total", ())] == 1
    assert figures[("trionet_names_udp_dropped_total", (("reason", "busy"),))] == 0
    assert figures[("trionet_names_udp_dropped_total", (("reason", "rate"),))] == 0
    assert figures[("trionet_names_slots_in_use", ())] == 0


def test_an_unreadable_hosts_file_at_start_is_one_line(trionet_cmd, tmp_path):
    result = trionet_cmd("names", "serve", "--hosts", str(tmp_path / "missing"), "--port", "0", "--dns-port", "0")
    assert result.returncode == 1
    assert f"cannot read the hosts file {tmp_path / 'missing'}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


async def test_metrics_are_scraped_over_http_while_clients_are_served(start_names, nursery, http_get):
    from prometheus_client.parser import text_string_to_metric_families

    from trionet.metrics import serve_metrics

    server, addrs = await start_names(limit=2, quota=0)
    (_, metrics_port), *_ = await nursery.start(serve_metrics, names_registry(server), "127.0.0.1", 0)
    async with trionet.names.connect(*addrs.line) as client:
        for _ in range(3):
            await client.resolve("gw")
        answer = await http_get(metrics_port)  # scraped mid-session
    assert answer.startswith(b"HTTP/1.1 200 OK")
    families = {f.name: f for f in text_string_to_metric_families(answer.partition(b"\r\n\r\n")[2].decode())}
    assert families["trionet_names_slots_in_use"].samples[0].value == 1
    lookups = {s.labels["source"]: s.value for s in families["trionet_names_lookup_seconds"].samples
               if s.name.endswith("_count")}  # fmt: skip
    assert lookups["hosts"] == 3
