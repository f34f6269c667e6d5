"""``trionet ring``: a logical token ring across hosts with two counter-rotating tokens.

The public API: :func:`load_config` and :class:`RingConfig` for ring files,
:class:`RingNode` to run a node (``trionet ring join`` is a thin wrapper),
:class:`NodeCore` for the sans-IO token logic, and :func:`simulate` to run a
whole ring in memory.
"""

from trionet.ring.config import ConfigError, NodeAddress, RingConfig, iter_messages, load_config
from trionet.ring.node import NodeOptions, RingError, RingNode, request_stop
from trionet.ring.protocol import NodeCore, Summary
from trionet.ring.sim import simulate

__all__ = [
    "ConfigError",
    "NodeAddress",
    "NodeCore",
    "NodeOptions",
    "RingConfig",
    "RingError",
    "RingNode",
    "Summary",
    "iter_messages",
    "load_config",
    "request_stop",
    "simulate",
]
