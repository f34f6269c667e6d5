"""What a lookup returns, wherever it came from, and the name helpers every layer shares.

An :class:`Answer` is the same object whether the hosts table, the cache or
an upstream query produced it; the line protocol and the DNS port each
render it their own way. Names are kept in one form everywhere: lower case,
no trailing dot (``www.example.com``); the root is ``"."``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

__all__ = [
    "Answer",
    "LINE_TYPES",
    "STATUSES",
    "InvalidName",
    "address_from_reverse",
    "normalize_name",
    "reverse_name",
]

STATUSES = ("ok", "nxdomain", "nodata", "servfail")
"""``ok``: records found; ``nxdomain``: no such name; ``nodata``: the name
exists but has no record of the type; ``servfail``: the upstreams failed."""

LINE_TYPES = ("A", "AAAA", "PTR", "CNAME", "NS")
"""Record types the line protocol accepts (their data is one word each)."""


class InvalidName(ValueError):
    """A string that cannot be a domain name."""


def normalize_name(name: str) -> str:
    """Return ``name`` in lower case without its trailing dot.

    Raises:
        InvalidName: an empty label, a label over 63 bytes, a name over 253
            bytes, or a character other than a letter, digit, ``-``, ``_``,
            ``*`` or ``/`` (the last two occur in real names, so they pass).
    """
    if name in (".", ""):
        if name == ".":
            return "."
        raise InvalidName("empty name")
    text = name[:-1] if name.endswith(".") else name
    if len(text) > 253:
        raise InvalidName("name longer than 253 characters")
    labels = text.split(".")
    for label in labels:
        if not label:
            raise InvalidName(f"empty label in {name!r}")
        if len(label) > 63:
            raise InvalidName(f"label longer than 63 characters in {name[:80]!r}")
        if not all(c.isascii() and (c.isalnum() or c in "-_*/") for c in label):
            raise InvalidName(f"invalid character in {name[:80]!r}")
    return text.lower()


def reverse_name(address: str) -> str:
    """Return the PTR name of an IPv4 or IPv6 address (``1.0.0.10.in-addr.arpa``).

    Raises:
        ValueError: ``address`` is not an IP address.
    """
    return ipaddress.ip_address(address).reverse_pointer


def address_from_reverse(name: str) -> str | None:
    """Return the address a PTR name stands for, or None if ``name`` is not one.

    ``1.0.0.10.in-addr.arpa`` gives ``10.0.0.1``; a complete ``ip6.arpa``
    name (32 nibbles) gives the compressed IPv6 address.
    """
    name = name.lower().rstrip(".")
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4:
            return None
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        except ValueError:
            return None
    if name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            return None
        digits = "".join(reversed(nibbles))
        return str(ipaddress.IPv6Address(int(digits, 16)))
    return None


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one lookup.

    Attributes:
        name: the name asked for (normalized).
        rdtype: the record type asked for, as text (``A``).
        status: one of :data:`STATUSES`.
        records: the data of the records, as DNS presentation text
            (addresses for A/AAAA, names for PTR); empty unless ``ok``.
        ttl: seconds the answer stays valid from now (counted down by the cache).
        source: ``hosts``, ``cache`` or ``dns``.
        owner: the name the records belong to: ``name`` itself, or the end
            of the CNAME chain.
        chain: the CNAME records followed, as ``(alias, target)`` pairs.
        soa: for a negative answer from DNS, the zone's SOA as
            ``(zone, rdata text)``; the DNS port puts it in the authority section.
        message: for ``servfail``, what went wrong.
    """

    name: str
    rdtype: str
    status: str
    records: tuple[str, ...] = ()
    ttl: int = 0
    source: str = "dns"
    owner: str = ""
    chain: tuple[tuple[str, str], ...] = ()
    soa: tuple[str, str] | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if not self.owner:
            object.__setattr__(self, "owner", self.name)

    def with_ttl(self, ttl: int, source: str) -> "Answer":
        """Return a copy with another remaining TTL and source."""
        return replace(self, ttl=ttl, source=source)
