"""``trionet names``: a connection-oriented name server with a client limit, a backlog and a quota.

- :mod:`trionet.names.hosts`, :mod:`~trionet.names.cache`,
  :mod:`~trionet.names.protocol`, :mod:`~trionet.names.dnswire`,
  :mod:`~trionet.names.session`, :mod:`~trionet.names.watcher`,
  :mod:`~trionet.names.hostswire`: the sans-IO core (hosts file, answer
  cache, line protocol, DNS messages, the rules of a session, hosts-file
  reloads, ready-made hosts answers);
- :mod:`trionet.names.resolver`, :mod:`~trionet.names.server`,
  :mod:`~trionet.names.lineport` and :mod:`~trionet.names.dnsport`: the trio layer;
- :mod:`trionet.names.client`: ``async with trionet.names.connect(host, port) as conn``.
"""

from trionet.names.client import (
    NamesConnection,
    NamesConnectionError,
    QuotaReached,
    Resolved,
    ServerBusy,
    SessionEnded,
    connect,
)

__all__ = [
    "NamesConnection",
    "NamesConnectionError",
    "QuotaReached",
    "Resolved",
    "ServerBusy",
    "SessionEnded",
    "connect",
]
