"""Host and port as people read them: one formatter and one loopback test for every service.

Pure: no sockets, no name lookups.
"""

from __future__ import annotations

import ipaddress

__all__ = ["format_address", "is_loopback", "parse_host_port"]


def format_address(host_or_sockaddr, port: int | None = None) -> str:
    """``host:port``, or ``[v6]:port`` for an IPv6 address.

    Takes ``(host, port)`` as two arguments or as a socket address tuple (as
    ``getsockname()`` returns, IPv6 ones with four items); anything else is
    shown with ``str``.
    """
    if port is None:
        try:
            host, port = host_or_sockaddr[0], host_or_sockaddr[1]
        except (TypeError, IndexError):
            return str(host_or_sockaddr)
    else:
        host = host_or_sockaddr
    host = str(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True when ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1).

    Any other name counts as reachable from other hosts.
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_host_port(value: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as ``(host, port)``; port 0 ("any free port") only if allowed.

    Raises:
        ValueError: ``expected HOST:PORT, got '...'``.
    """
    host, sep, port = value.rpartition(":")
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)
