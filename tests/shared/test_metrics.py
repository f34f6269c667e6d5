"""The shared metrics endpoint: Prometheus text at /metrics, bounded requests, the SIGUSR1 summary."""

from __future__ import annotations

import logging
import os

import pytest
import trio
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from trionet import metrics
from trionet.metrics import ServiceCollector, http_response, new_registry, serve_metrics, summary_lines
from trionet.serving import TCPService


async def _echo_once(conn) -> None:
    data = await conn.stream.receive_some(100)
    conn.requests += 1
    await conn.stream.send_all(data)


def _families(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/plain; version=" in head
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


async def _serve_with_metrics(nursery, handler) -> tuple[TCPService, tuple[str, int], int]:
    """An ``echo`` service running ``handler`` and a /metrics endpoint with its collector: (service, its address, metrics port)."""
    service = TCPService("echo", handler, logging.getLogger("trionet.test"))
    (host, port), *_ = await nursery.start(service.serve, "127.0.0.1", 0)
    registry = new_registry()
    registry.register(ServiceCollector([service]))
    (_, metrics_port), *_ = await nursery.start(serve_metrics, registry, "127.0.0.1", 0)
    return service, (host, port), metrics_port


def _samples(answer: bytes) -> dict:
    return {(s.name, s.labels.get("listener")): s.value for f in _families(answer).values() for s in f.samples}


async def test_a_scrape_reports_the_services_connections_and_requests(nursery, http_get):
    service, (host, port), metrics_port = await _serve_with_metrics(nursery, _echo_once)

    idle = await trio.open_tcp_stream(host, port)  # stays open during the scrape
    for _ in range(3):
        async with await trio.open_tcp_stream(host, port) as client:
            await client.send_all(b"ping")
            assert await client.receive_some(100) == b"ping"
    with trio.fail_after(10):
        while len(service.connections) != 1:  # the three closed ones are accounted for
            await trio.sleep(0.01)

    families = _families(await http_get(metrics_port))
    samples = {(s.name, s.labels.get("listener")): s.value for f in families.values() for s in f.samples}
    assert samples[("trionet_connections_open", "echo")] == 1
    assert samples[("trionet_connections_total", "echo")] == 4
    assert samples[("trionet_requests_total", "echo")] == 3
    assert "process_resident_memory_bytes" in families and "process_open_fds" in families
    await idle.aclose()


async def _echo_parked(conn) -> None:
    fd = conn.stream.socket.fileno()

    def serve() -> bool:  # in the service's ready loop
        data = os.read(fd, 100)
        if data:
            conn.requests += 1
            os.write(fd, data)
        return bool(data)  # EOF: hand the connection back, and it ends

    await conn.service.ready.park(conn.stream.socket, serve)


async def test_a_scrape_reports_what_the_ready_loop_answered(nursery, http_get):
    service, (host, port), metrics_port = await _serve_with_metrics(nursery, _echo_parked)
    async with await trio.open_tcp_stream(host, port) as client:
        for word in (b"one", b"two", b"three"):
            await client.send_all(word)
            assert await client.receive_some(100) == word
    # The echo reaches the client before the loop's thread counts the
    # serve() that sent it; once the EOF that follows has ended the
    # connection, that thread has counted all three.
    with trio.fail_after(10):
        while service.connections:
            await trio.sleep(0.01)
    samples = _samples(await http_get(metrics_port))
    assert samples[("trionet_ready_loop_answers_total", "echo")] == 3
    assert samples[("trionet_ready_loop_wakeups_total", "echo")] >= 3  # one request at a time: a wake-up each
    assert 0 <= samples[("trionet_ready_loop_polled_total", "echo")] <= samples[("trionet_ready_loop_wakeups_total", "echo")]
    assert samples[("trionet_ready_loop_batch_sends_total", "echo")] == 0  # (its serve() sends for itself)


def test_http_answers_by_method_and_path():
    registry = new_registry()
    assert http_response(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", registry).startswith(b"HTTP/1.1 200 OK")
    head = http_response(b"HEAD /metrics HTTP/1.1\r\n\r\n", registry)
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    assert http_response(b"GET / HTTP/1.1\r\n\r\n", registry).endswith(b"metrics at /metrics\n")
    assert http_response(b"GET /nope HTTP/1.1\r\n\r\n", registry).startswith(b"HTTP/1.1 404 Not Found")
    assert http_response(b"POST /metrics HTTP/1.1\r\n\r\n", registry).startswith(b"HTTP/1.1 405")
    assert http_response(b"\x00\xff junk\r\n\r\n", registry).startswith(b"HTTP/1.1 400 Bad Request")


async def test_a_huge_or_slow_request_head_is_refused_and_closed(nursery, monkeypatch, http_get):
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.2)
    (_, port), *_ = await nursery.start(serve_metrics, new_registry(), "127.0.0.1", 0)
    huge = await http_get(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (metrics.MAX_REQUEST_HEAD + 10))
    assert huge.startswith(b"HTTP/1.1 431 ")
    slow = await http_get(port, b"GET /metrics HTTP/1.1\r\n")  # never ends its head
    assert slow.startswith(b"HTTP/1.1 408 ")


def test_the_summary_has_every_figure_but_histogram_buckets():
    registry = new_registry()
    Counter("demo_queries", "Queries.", ["source"], registry=registry).labels("cache").inc(3)
    Histogram("demo_seconds", "Latency.", registry=registry).observe(0.25)
    lines = summary_lines(registry)
    assert 'demo_queries_total{source="cache"} 3' in lines
    assert "demo_seconds_count 1" in lines and "demo_seconds_sum 0.25" in lines
    assert not any("_bucket" in line or "_created" in line for line in lines)
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)


@pytest.mark.parametrize("value", ["nohost", "host:notaport", ":9100", "h:70000"])
def test_a_bad_metrics_address_is_a_usage_error(trionet_cmd, value):
    result = trionet_cmd("sql", "serve", "--port", "0", "--pg-port", "0", "--metrics", value)
    assert result.returncode == 2 and "expected HOST:PORT" in result.stderr


def test_sql_serve_serves_metrics_and_logs_them_on_sigusr1(server_process):
    import signal
    import socket

    server = server_process("sql", "serve", "--port", "0", "--pg-port", "0", "--metrics", "127.0.0.1:0")
    metrics_port = int(server.wait_for(r"metrics listening on 127\.0\.0\.1:(\d+)").group(1))
    server.wait_for(r"sql listening on")
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    families = set(_families(answer))
    assert {"trionet_connections_open", "trionet_connections", "process_open_fds"} <= families
    server.signal(signal.SIGUSR1)
    server.wait_for(r"SIGUSR1: figures")
    server.wait_for(r'    trionet_connections_open\{listener="sql"\} 0')
    assert server.proc.poll() is None  # SIGUSR1 no longer kills a server


def test_merged_families_label_each_process_and_name_each_family_once():
    from prometheus_client import generate_latest

    worker = new_registry()
    Counter("demo_queries", "Queries.", ["source"], registry=worker).labels("cache").inc(3)
    text = generate_latest(worker).decode()
    own = list(new_registry().collect())
    merged = metrics.merge_families(own, {"0": text, "1": text}, "worker")
    names = [family.name for family in merged]
    assert len(names) == len(set(names))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in merged for s in f.samples}
    for index in ("0", "1"):
        assert samples[("demo_queries_total", (("source", "cache"), ("worker", index)))] == 3
        assert ("process_open_fds", (("worker", index),)) in samples
    assert ("process_open_fds", ()) in samples  # this process's own, unlabelled


def test_the_loopless_endpoint_answers_and_bounds_slow_and_huge_heads():
    """MetricsEndpoint (the workers' supervisor): the same answers as serve_metrics, time passed in."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = metrics.MetricsEndpoint([listener], new_registry())
    port = listener.getsockname()[1]
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        clients[0].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        clients[1].sendall(b"GET /metrics HTTP/1.1\r\n")  # never ends its head
        clients[2].sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (metrics.MAX_REQUEST_HEAD + 10))
        for _ in range(50):  # the kernel hands over what was sent; no clock involved
            if endpoint.step(now=0.0) == metrics.REQUEST_TIMEOUT and len(endpoint.scrapes) == 1:
                break
        assert len(endpoint.scrapes) == 1  # the slow one is still waited for, until its deadline
        assert endpoint.step(now=metrics.REQUEST_TIMEOUT) == float("inf") and not endpoint.scrapes
        answers = [b"".join(iter(lambda c=c: c.recv(65536), b"")) for c in clients]
        assert "process_open_fds" in _families(answers[0])
        assert answers[1].startswith(b"HTTP/1.1 408 ") and answers[2].startswith(b"HTTP/1.1 431 ")
        for client in clients:
            client.close()
    finally:
        endpoint.close()
