"""Host and port as people read them: one formatter and one loopback test for every service.

Pure: no sockets, no name lookups.
"""

from __future__ import annotations

import ipaddress

__all__ = ["format_address", "is_loopback"]


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
