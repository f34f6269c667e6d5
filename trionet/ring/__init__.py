"""``trionet ring``: a logical token ring across hosts with two counter-rotating tokens.

The public API: :func:`load_config` and :class:`RingConfig` for ring files,
:func:`load_secret` for the shared secret (``RingNode(..., secret=...)``),
:class:`RingNode` to run a node (``trionet ring join`` is a thin wrapper),
and :class:`NodeCore` for the sans-IO token logic. The in-memory simulation
of a whole ring is a test harness: ``tests/ring/sim.py``.
"""

from trionet.ring.config import (
    ConfigError,
    NodeAddress,
    RingConfig,
    iter_messages,
    load_config,
    load_secret,
)
from trionet.ring.core import NodeCore, Summary
from trionet.ring.node import NodeOptions, RingError, RingNode, request_stop

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
    "load_secret",
    "request_stop",
]
