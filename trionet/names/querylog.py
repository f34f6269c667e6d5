"""What ``--log-queries`` writes: one line per query, like dnsmasq's ``log-queries``.

The line is ``query CLIENT TRANSPORT NAME TYPE SOURCE RCODE MILLISECONDS``,
e.g. ``query 127.0.0.1:40000 udp gw.lan A hosts NOERROR 0.1ms``. SOURCE is
where the answer came from (``hosts``, ``cache``, ``dns``), or ``-`` for a
message answered with an error before any lookup (NAME and TYPE are then
``-`` too). Pure: the shells pass the figures in and log the line.
"""

from __future__ import annotations

import dns.exception
import dns.message
import dns.rcode

from trionet.names.answer import Answer

__all__ = ["answer_rcode", "error_rcode", "query_line"]

_STATUS_RCODE = {"ok": "NOERROR", "nodata": "NOERROR", "nxdomain": "NXDOMAIN", "servfail": "SERVFAIL"}


def answer_rcode(answer: Answer) -> str:
    """The rcode a DNS client gets for ``answer`` (what the line protocol's status means in DNS)."""
    return _STATUS_RCODE[answer.status]


def error_rcode(response: bytes) -> str:
    """The rcode of an error response built by :mod:`~trionet.names.dnswire`, extended ones (BADVERS) included."""
    try:
        return dns.rcode.to_text(dns.message.from_wire(response).rcode())
    except (dns.exception.DNSException, ValueError, IndexError):  # ours parse; a guard for the log only
        return dns.rcode.to_text(response[3] & 0xF) if len(response) >= 4 else "?"


def query_line(client: str, transport: str, name: str, rdtype: str, source: str, rcode: str, seconds: float) -> str:
    """The log line for one query (``seconds`` from receipt to the answer handed to the socket)."""
    return f"query {client} {transport} {name} {rdtype} {source} {rcode} {seconds * 1000:.1f}ms"
