"""Sans-IO hosts-file parser and the name table it fills.

The format is hosts(5): one IP address (IPv4 or IPv6) per line followed by a
canonical name and any aliases, separated by spaces or tabs; ``#`` starts a
comment anywhere on a line. Names are case-insensitive and a trailing dot is
ignored. A name may appear on several lines: its addresses add up, in file
order. A malformed line (a bad address, no name, a bad name) is skipped and
reported as a :class:`HostsWarning` naming the file and the line.

The table answers forward queries (A, AAAA) for every name, and reverse
(PTR) queries for every address with the canonical name of the first line
that lists it. A name that is in the table with no address of the type asked
is NODATA, not NXDOMAIN.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from trionet.names.answer import (
    Answer,
    InvalidName,
    address_from_reverse,
    normalize_name,
)

__all__ = ["HOSTS_TTL", "HostsTable", "HostsWarning", "load_hosts", "parse_hosts"]

HOSTS_TTL = 0
"""The TTL of answers from the hosts file: 0, so that resolvers downstream
never hold an entry that a reload may change."""


@dataclass(frozen=True, slots=True)
class HostsWarning:
    """A hosts-file line that was skipped, and why."""

    path: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.message}; line skipped"


@dataclass
class _Host:
    canonical: str
    v4: list[str] = field(default_factory=list)
    v6: list[str] = field(default_factory=list)


class HostsTable:
    """Names and addresses from a hosts file. Build it with :func:`parse_hosts`.

    Lookups never fail: :meth:`lookup` returns None for a name the table
    does not know, so the caller moves on to the cache and upstream.
    """

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self._reverse: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, name: str) -> bool:
        return name in self._hosts

    def names(self) -> list[str]:
        """Every name in the table (canonical names and aliases)."""
        return list(self._hosts)

    def addresses(self, name: str) -> tuple[list[str], list[str]] | None:
        """Return ``(ipv4 addresses, ipv6 addresses)`` of ``name``, or None if unknown."""
        host = self._hosts.get(name)
        return None if host is None else (list(host.v4), list(host.v6))

    def canonical(self, name: str) -> str | None:
        """Return the canonical name of the first line that lists ``name``."""
        host = self._hosts.get(name)
        return None if host is None else host.canonical

    def reverse(self, address: str) -> str | None:
        """Return the canonical name for ``address`` (any textual form), or None."""
        try:
            key = str(ipaddress.ip_address(address))
        except ValueError:
            return None
        return self._reverse.get(key)

    def lookup(self, name: str, rdtype: str) -> Answer | None:
        """Answer ``name``/``rdtype`` from the table, or return None if it has no say.

        Args:
            name: a normalized name (see :func:`~trionet.names.answer.normalize_name`).
            rdtype: the record type as text.

        Returns:
            An ``ok`` or ``nodata`` answer with source ``hosts``, or None when
            the name (or, for PTR, the address) is not in the table, and
            for ANY (the resolver answers that one, for every name: RFC 8482).
        """
        if rdtype == "ANY":
            return None
        if rdtype == "PTR":
            address = address_from_reverse(name)
            if address is not None:
                target = self.reverse(address)
                if target is None:
                    return None
                return Answer(name, rdtype, "ok", (target + ".",), HOSTS_TTL, "hosts")
        host = self._hosts.get(name)
        if host is None:
            return None
        records = host.v4 if rdtype == "A" else host.v6 if rdtype == "AAAA" else []
        if not records:
            return Answer(name, rdtype, "nodata", (), HOSTS_TTL, "hosts")
        return Answer(name, rdtype, "ok", tuple(records), HOSTS_TTL, "hosts")

    def _add(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, names: list[str]) -> None:
        text = str(address)
        self._reverse.setdefault(text, names[0])
        for name in names:
            host = self._hosts.setdefault(name, _Host(canonical=names[0]))
            family = host.v4 if address.version == 4 else host.v6
            if text not in family:
                family.append(text)


def parse_hosts(text: str, path: str = "<hosts>") -> tuple[HostsTable, list[HostsWarning]]:
    """Parse the text of a hosts file.

    Args:
        text: the whole file.
        path: the file's name, for the warnings.

    Returns:
        The table and one warning per skipped line.
    """
    table = HostsTable()
    warnings: list[HostsWarning] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        raw_address, raw_names = fields[0], fields[1:]
        try:
            # A scope (fe80::1%eth0) names a link, not part of the address.
            address = ipaddress.ip_address(raw_address.split("%", 1)[0])
        except ValueError:
            warnings.append(HostsWarning(path, lineno, f"{raw_address[:60]!r} is not an IP address"))
            continue
        if not raw_names:
            warnings.append(HostsWarning(path, lineno, f"no name after {raw_address}"))
            continue
        try:
            names = [normalize_name(n) for n in raw_names]
        except InvalidName as exc:
            warnings.append(HostsWarning(path, lineno, str(exc)))
            continue
        if "." in names:
            warnings.append(HostsWarning(path, lineno, "the root '.' is not a host name"))
            continue
        table._add(address, names)
    return table, warnings


def load_hosts(path: str) -> tuple[HostsTable, list[HostsWarning]]:
    """Read and parse the hosts file at ``path`` (undecodable bytes become U+FFFD).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_hosts(f.read(), path)
