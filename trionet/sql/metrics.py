"""The SQL server's metrics: what ``--metrics`` serves and SIGUSR1 logs (see :mod:`trionet.metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from trionet.metrics import ServiceCollector, new_registry
from trionet.sql.server import SqlServer

__all__ = ["sql_registry"]


def sql_registry(server: SqlServer) -> CollectorRegistry:
    """A registry with the process metrics and the server's connections and requests."""
    registry = new_registry()
    registry.register(ServiceCollector([server.service]))
    return registry
