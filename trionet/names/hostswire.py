"""Ready-made DNS responses for hosts-file and cached names: the DNS port's fast path, sans-IO.

A hosts-file answer depends only on the query's bytes after its 2-byte ID
and on the hosts table, so its response (after the ID) is kept
(:class:`HostsWireCache`), and a repeated query costs one dict lookup and
one concatenation. A cached answer depends on them and on its remaining
TTL, which changes once a second: :class:`TimedWireCache` keeps its
response until then (and never into the entry's prefetch window, so that
prefetch still sees the hit). Both are bounded (:data:`HOSTS_WIRE_ENTRIES`;
full means emptied, not evicted one by one: cheaper, and the busy names
come back at once), and are cleared whenever the hosts table changes.
"""

from __future__ import annotations

__all__ = ["HOSTS_WIRE_ENTRIES", "HostsWireCache", "TimedWireCache"]

HOSTS_WIRE_ENTRIES = 4096
"""Ready-made responses kept at most."""


class HostsWireCache:
    """Query bytes (after the ID) to response bytes (after the ID), for hosts-file answers only.

    Args:
        entries: the most responses kept.
    """

    __slots__ = ("_entries", "_linked", "_max", "get")

    def __init__(self, entries: int = HOSTS_WIRE_ENTRIES) -> None:
        self._entries: dict[bytes, bytes] = {}
        self._linked: list[HostsWireCache | TimedWireCache] = []
        self._max = entries
        self.get = self._entries.get
        """``get(query[2:])``: the response after its ID, or None."""

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, query: bytes, response: bytes) -> None:
        """Keep ``response`` (whole, with its ID) as the answer to ``query`` (whole, with its ID)."""
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[query[2:]] = response[2:]

    def clear(self) -> None:
        """Forget every response (the hosts table changed), the linked caches' too."""
        self._entries.clear()
        for cache in self._linked:
            cache.clear()

    def linked(self) -> HostsWireCache:
        """A new cache, emptied whenever this one is (the UDP port's: its answers may be truncated)."""
        return self.link(HostsWireCache(self._max))

    def link(self, cache):
        """Empty ``cache`` (anything with ``clear()``) whenever this one is emptied; returns it."""
        self._linked.append(cache)
        return cache

    def unlink(self, cache) -> None:
        """Stop clearing ``cache`` with this one (its port stopped)."""
        if cache in self._linked:
            self._linked.remove(cache)


class TimedWireCache:
    """Query bytes (after the ID) to response bytes (after the ID), each valid until a time: for cached answers.

    Args:
        entries: the most responses kept.
    """

    __slots__ = ("_entries", "_max")

    def __init__(self, entries: int = HOSTS_WIRE_ENTRIES) -> None:
        self._entries: dict[bytes, tuple[bytes, float]] = {}
        self._max = entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: bytes, now: float) -> bytes | None:
        """The response (after its ID) to ``query`` (after its ID) if it is still valid at ``now``, else None."""
        entry = self._entries.get(query)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[query]
            return None
        return entry[0]

    def remember(self, query: bytes, response: bytes, until: float) -> None:
        """Keep ``response`` (whole, with its ID) as the answer to ``query`` (whole) until ``until``."""
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[query[2:]] = (response[2:], until)

    def clear(self) -> None:
        """Forget every response."""
        self._entries.clear()
