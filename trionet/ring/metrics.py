"""A ring node's metrics: what ``ring join --metrics`` serves and SIGUSR1 logs (see :mod:`trionet.metrics`).

Everything is read from the node's own counters when someone scrapes; the
hop path pays one integer increment per token (``NodeCore.tokens_seen``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from trionet.metrics import FunctionCollector, new_registry
from trionet.ring.frames import Direction
from trionet.ring.node import RingNode

__all__ = ["ring_registry"]


def ring_registry(node: RingNode) -> CollectorRegistry:
    """A registry with the process metrics and ``node``'s tokens, messages and links."""
    registry = new_registry()
    registry.register(FunctionCollector(lambda: _collect(node)))
    return registry


def _collect(node: RingNode) -> Iterator[Metric]:
    core = node.core
    tokens = CounterMetricFamily("trionet_ring_tokens", "Token visits at this node.", labels=["direction"])
    for direction in Direction:
        tokens.add_metric([direction.label], core.tokens_seen[direction])
    yield tokens
    messages = CounterMetricFamily(
        "trionet_ring_messages", "Messages by what this node did with them.", labels=["outcome"]
    )
    for outcome in ("sent", "delivered", "already_delivered", "forwarded", "returned", "dropped", "resent", "undelivered", "stale"):
        messages.add_metric([outcome], getattr(core, outcome))
    yield messages
    links = [node.prev_link, node.next_link]
    epoch = GaugeMetricFamily("trionet_ring_epoch", "The ring epoch this node is in (the frames each link sends).", labels=["link"])
    connects = CounterMetricFamily("trionet_ring_link_connects", "Connections made on each link.", labels=["link"])
    resent = CounterMetricFamily("trionet_ring_link_resent_frames", "Frames resent after a reconnect.", labels=["link"])
    duplicates = CounterMetricFamily(
        "trionet_ring_link_duplicate_frames", "Frames received twice and dropped.", labels=["link"]
    )
    for link in links:
        epoch.add_metric([link.name], core.epoch)
        connects.add_metric([link.name], link.connects)
        resent.add_metric([link.name], link.state.resent)
        duplicates.add_metric([link.name], link.state.duplicates)
    yield from (epoch, connects, resent, duplicates)
    yield GaugeMetricFamily("trionet_ring_finished", "1 once the finalization command passed.", value=int(core.finished))
