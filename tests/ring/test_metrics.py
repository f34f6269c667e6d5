"""A ring node's metrics: tokens per direction, messages by outcome, links, read from the node at scrape time."""

from __future__ import annotations

import trio

from trionet.metrics import summary_lines
from trionet.ring.config import RingConfig
from trionet.ring.demo import free_ports
from trionet.ring.metrics import ring_registry
from trionet.ring.node import NodeOptions, RingNode

FAST = NodeOptions(ack_delay=0.01, ack_timeout=5.0, connect_timeout=20.0)


def _samples(registry) -> dict[tuple[str, str], float]:
    out = {}
    for metric in registry.collect():
        for sample in metric.samples:
            label = next(iter(sample.labels.values()), "")
            out[(sample.name, label)] = sample.value
    return out


async def test_the_figures_follow_what_the_nodes_did():
    config = RingConfig.local(3, ports=free_ports(3))
    per_node = 5
    nodes = [
        RingNode(config, i, messages=[((i + 1 + k % 2) % 3, f"m{k}") for k in range(per_node)], options=FAST)
        for i in range(3)
    ]
    registries = [ring_registry(node) for node in nodes]
    before = _samples(registries[1])
    assert before[("trionet_ring_tokens_total", "cw")] == 0 and before[("trionet_ring_finished", "")] == 0
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.serve)
        with trio.fail_after(30):
            await nodes[0].finished.wait()
    for i, registry in enumerate(registries):
        figures = _samples(registry)
        assert figures[("trionet_ring_messages_total", "sent")] == per_node
        assert figures[("trionet_ring_messages_total", "returned")] == per_node
        # Every message goes the whole way round: each of the others' passes here once, delivered or not.
        assert figures[("trionet_ring_messages_total", "forwarded")] == 2 * per_node
        for direction in ("cw", "ccw"):
            assert figures[("trionet_ring_tokens_total", direction)] >= 1
        assert figures[("trionet_ring_finished", "")] == 1
        assert figures[("trionet_ring_link_connects_total", nodes[i].next_link.name)] >= 1
        assert figures[("trionet_ring_epoch", nodes[i].prev_link.name)] == 1
    assert sum(_samples(r)[("trionet_ring_messages_total", "delivered")] for r in registries) == 3 * per_node
    assert any(line.startswith('trionet_ring_tokens_total{direction="cw"} ') for line in summary_lines(registries[0]))


async def test_a_running_ring_is_scraped_over_http(http_get):
    from prometheus_client.parser import text_string_to_metric_families

    from trionet.metrics import serve_metrics

    config = RingConfig.local(2, ports=free_ports(2))
    nodes = [RingNode(config, i, messages=[(1 - i, f"m{k}") for k in range(3)], options=FAST) for i in range(2)]
    async with trio.open_nursery() as nursery:
        (_, port), *_ = await nursery.start(serve_metrics, ring_registry(nodes[1]), "127.0.0.1", 0)
        for node in nodes:
            await nursery.start(node.serve)
        with trio.fail_after(30):
            await nodes[0].finished.wait()
        answer = await http_get(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    body = answer.partition(b"\r\n\r\n")[2].decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    sent = {s.labels["outcome"]: s.value for s in families["trionet_ring_messages"].samples}
    assert sent["sent"] == 3 and sent["delivered"] == 3
