"""The benchmark's hooks (trionet.ring.stats) measure a real ring from outside the node's code."""

from __future__ import annotations

import trio

from trionet.ring.config import RingConfig
from trionet.ring.demo import free_ports
from trionet.ring.node import RingNode
from trionet.ring.stats import NodeStats, StreamLog, run_measured
from trionet.ring.transport import TcpTransport


async def test_stats_report_round_trips_measured_by_the_core_and_at_the_links():
    # What tools/bench_ring.py reads. The link's round trip (message written
    # to message read back) lies inside the core's (the token's visit that
    # sent it to the message back at the token task), so it can be neither
    # longer nor zero. Real sockets, so the real clock.
    config = RingConfig.local(3, ports=free_ports(3))
    log = StreamLog()
    nodes = [
        RingNode(config, 0, messages=[(i % 3, f"m{i}") for i in range(20)], transport=TcpTransport(stream=log.stream)),
        RingNode(config, 1),
        RingNode(config, 2),
    ]
    stats = [NodeStats(), NodeStats(round_trips=False), NodeStats(round_trips=False)]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for node, watch in zip(nodes, stats):
                nursery.start_soon(run_measured, node, watch)
    report = stats[0].report(nodes[0], log)
    assert report["round_trips"] == 20 and report["frames_received"] > 40
    assert 0 < report["link_round_trip_median"] < report["round_trip_median"] < 5
    assert report["cpu_busy"] > 0 and report["max_rss_kib"] > 0
    assert report["first_send"] <= report["last_return"]
    # The forwarding nodes' observers let go after the first step: nothing per hop.
    for node, watch in zip(nodes[1:], stats[1:]):
        assert node.core.observer is None and watch.round_trips == 0
        assert watch.report(node)["cpu_busy"] > 0 and node.core.forwarded > 0
