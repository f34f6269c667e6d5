"""What a lookup returns, wherever it came from, and the name helpers every layer shares.

An :class:`Answer` is the same object whether the hosts table, the cache or
an upstream query produced it; the line protocol and the DNS port each
render it their own way. Names are kept in one form everywhere: lower case,
no trailing dot (``www.example.com``); the root is ``"."``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

import dns.rdatatype

__all__ = [
    "ANY_HINFO",
    "ANY_TTL",
    "Answer",
    "ONE_WORD_TYPES",
    "STATUSES",
    "InvalidName",
    "InvalidType",
    "address_from_reverse",
    "any_answer",
    "normalize_name",
    "parse_type",
    "record_type",
    "reverse_name",
]

STATUSES = ("ok", "nxdomain", "nodata", "servfail")
"""``ok``: records found; ``nxdomain``: no such name; ``nodata``: the name
exists but has no record of the type; ``servfail``: the upstreams failed."""

ONE_WORD_TYPES = frozenset({"A", "AAAA", "PTR", "CNAME", "NS", "DNAME"})
"""Record types whose data is always one word (an address or a name): the
line protocol separates their records with spaces, every other type's with `` | ``."""

ANY_HINFO = '"RFC8482" ""'
"""The data of the one HINFO record every ANY query gets (RFC 8482 4.2)."""
ANY_TTL = 3600
"""Its TTL: long enough that a client does not ask again at once (RFC 8482 4.2 leaves it to the operator)."""


class InvalidName(ValueError):
    """A string that cannot be a domain name."""


class InvalidType(ValueError):
    """A string that is not a record type one can ask for."""


def parse_type(text: str) -> str:
    """Return the record type ``text`` names, in dnspython's spelling (``mx`` and ``TYPE15`` give ``MX``).

    Any type dnspython knows by name is accepted, and any ``TYPEnnn``
    (RFC 3597), and ``ANY`` (answered per RFC 8482, see :func:`any_answer`).

    Raises:
        InvalidType: not a type, or a meta type other than ANY (AXFR, IXFR,
            OPT, TSIG, ...): those are not questions a resolver answers.
    """
    try:
        value = dns.rdatatype.from_text(text)
    except (dns.rdatatype.UnknownRdatatype, ValueError):
        raise InvalidType(f"unknown record type {text[:20]!r}") from None
    if value == 0 or (dns.rdatatype.is_metatype(value) and value != dns.rdatatype.ANY):
        raise InvalidType(f"{dns.rdatatype.to_text(value)} is not a type a resolver answers")
    return dns.rdatatype.to_text(value)


def record_type(rdtype: str) -> str:
    """The type of the records that answer a question of type ``rdtype`` (HINFO for ANY, else itself)."""
    return "HINFO" if rdtype == "ANY" else rdtype


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
            (addresses for A/AAAA, absolute names for PTR, ``10
            mail.example.`` for MX, RFC 3597's ``\\# 4 0a000001`` for a type
            dnspython does not know); empty unless ``ok``. The records are of
            type :func:`record_type` (``rdtype``, or HINFO for ANY).
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


def any_answer(name: str) -> Answer:
    """The answer to an ANY query for ``name``: one synthesized HINFO record (RFC 8482 4.2).

    Chosen over "some RRset of the cache" (4.3 allows both): it costs no
    upstream query, has the same small size for every name (no
    amplification over UDP), and does not depend on what happens to be
    cached. It is not cached itself; it costs nothing to make.
    """
    return Answer(name, "ANY", "ok", (ANY_HINFO,), ANY_TTL, "rfc8482")
