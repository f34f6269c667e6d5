"""``trionet ring``: a logical token ring across hosts with two counter-rotating tokens.

The public API: :func:`load_config` and :class:`RingConfig` for ring files,
:func:`load_secret` for the shared secret (``RingNode(..., secret=...)``),
:class:`RingNode` to run a node (``trionet ring join`` is a thin wrapper),
:class:`NodeCore` for the sans-IO token logic, and :func:`simulate` to run a
whole ring in memory.
"""

from trionet.ring.config import ConfigError, NodeAddress, RingConfig, iter_messages, load_config, load_secret
from trionet.ring.node import NodeOptions, RingError, RingNode, request_stop
from trionet.ring.core import NodeCore, Summary

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
    "simulate",
]


def __getattr__(name: str):
    # The simulation needs trio.testing, which imports pytest when it is
    # installed: a node that only joins a ring should not pay for that
    # (about 0.2 s of startup and 10 MiB of memory), so it is imported on use.
    if name == "simulate":
        from trionet.ring.sim import simulate

        return simulate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
