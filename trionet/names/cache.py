"""Sans-IO answer cache: TTLs counted down, negative answers (RFC 2308), an LRU bound.

Every method takes ``now`` (seconds, any monotonic clock) instead of reading
a clock, so tests drive it with plain numbers or trio's mock clock.

- A positive answer lives for the smallest TTL of its records, CNAMEs of the
  chain included, clamped to ``[min_ttl, max_ttl]``.
- A negative answer (NXDOMAIN or NODATA) lives for ``min(SOA TTL, SOA
  MINIMUM)`` of the SOA the upstream sent (RFC 2308 section 5), clamped the
  same way; one without an SOA is not cached (section 5 again).
- SERVFAIL is never cached: the next client gets a fresh try.
- Answers read from the cache carry the remaining TTL, rounded down, and
  source ``cache``; an answer expires when its TTL reaches 0.
- At most ``max_entries`` answers are kept; storing one more evicts the
  least recently used.
- Prefetch: an entry read in the last :data:`PREFETCH_SHARE` of its TTL is
  *due*: :meth:`AnswerCache.get` still returns it, and tells ``on_due``
  (the resolver refreshes it in the background, see
  :class:`~trionet.names.resolver.Resolver`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from trionet.names.answer import Answer

__all__ = ["PREFETCH_SHARE", "STALE_TTL", "AnswerCache", "CacheStats"]


@dataclass
class CacheStats:
    """Counters, for logs and tests."""

    hits: int = 0
    misses: int = 0
    expired: int = 0
    evicted: int = 0
    stale: int = 0  # expired answers served because the upstreams failed (RFC 8767)
    due: int = 0  # hits in the last PREFETCH_SHARE of an entry's TTL (each one told on_due)


STALE_TTL = 30
"""The TTL of a stale answer (RFC 8767 section 4 recommends 30 seconds)."""
PREFETCH_SHARE = 0.1
"""An entry asked for in this last share of its TTL is refreshed in the background."""


class _Entry:
    """One cached answer: when it expires, when it is due for prefetch, and the copy last served."""

    __slots__ = ("answer", "due", "expires", "served", "served_ttl")

    def __init__(self, answer: Answer, expires: float, due: float) -> None:
        self.answer = answer
        self.expires = expires
        self.due = due  # when the last PREFETCH_SHARE of its TTL begins
        self.served = answer
        self.served_ttl = -1  # the TTL of ``served``; -1: none served yet


class AnswerCache:
    """A bounded, TTL-aware cache of :class:`~trionet.names.answer.Answer` keyed by (name, type).

    Args:
        max_entries: the LRU bound (at least 1).
        min_ttl: answers are kept at least this many seconds...
        max_ttl: ...and at most this many.
        stale_for: seconds an expired answer is kept past its TTL, to be
            served by :meth:`get_stale` while the upstreams fail (RFC 8767
            serve-stale); 0 forgets it at expiry.

    Attributes:
        on_due: called as ``on_due(name, rdtype)`` by :meth:`get` when it
            returns an entry in the last :data:`PREFETCH_SHARE` of its TTL
            (every time, until the entry is replaced); None for no prefetch.
    """

    def __init__(
        self, max_entries: int = 10_000, *, min_ttl: int = 0, max_ttl: int = 86_400, stale_for: float = 0
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if min_ttl < 0 or max_ttl < min_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.stale_for = stale_for
        self.stats = CacheStats()
        self.on_due: Callable[[str, str], None] | None = None
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries

    def clamp(self, ttl: int) -> int:
        """Return ``ttl`` clamped to ``[min_ttl, max_ttl]``."""
        return max(self.min_ttl, min(self.max_ttl, ttl))

    def get(self, name: str, rdtype: str, now: float) -> Answer | None:
        """Return the cached answer with its remaining TTL, or None if absent or expired."""
        key = (name, rdtype)
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        remaining = math.floor(entry.expires - now)
        if remaining <= 0:
            if not (self.stale_for and now < entry.expires + self.stale_for):
                del self._entries[key]  # kept only for serve-stale, within its window
            self.stats.expired += 1
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        if now >= entry.due and self.on_due is not None:
            self.stats.due += 1
            self.on_due(name, rdtype)
        if entry.served_ttl != remaining:  # answers are immutable: one per remaining second will do
            entry.served = entry.answer.with_ttl(remaining, "cache")
            entry.served_ttl = remaining
        return entry.served

    def unchanged_until(self, name: str, rdtype: str) -> float:
        """Until when the answer :meth:`get` just returned stays the same (its TTL drops a second, or prefetch is due).

        The DNS ports keep the response bytes until then
        (:class:`~trionet.names.hostswire.TimedWireCache`); 0 for an entry
        that is not cached.
        """
        entry = self._entries.get((name, rdtype))
        if entry is None or entry.served_ttl < 0:
            return 0.0
        return min(entry.expires - entry.served_ttl, entry.due)

    def get_stale(self, name: str, rdtype: str, now: float) -> Answer | None:
        """An expired answer still inside the serve-stale window, with TTL :data:`STALE_TTL`; else None.

        For when every upstream failed (RFC 8767 4: "stale answers ... with
        a TTL of 30 seconds"); a fresh answer is :meth:`get`'s.
        """
        entry = self._entries.get((name, rdtype))
        if entry is None:
            return None
        if math.floor(entry.expires - now) > 0 or now >= entry.expires + self.stale_for:
            return None  # still fresh (get's), or past the window
        self.stats.stale += 1
        return entry.answer.with_ttl(STALE_TTL, "stale")

    def put(self, answer: Answer, now: float) -> int:
        """Store ``answer`` (as fetched from upstream, TTL in ``answer.ttl``) if it may be cached.

        Returns:
            The TTL it was stored with, after clamping; 0 when it was not
            stored (SERVFAIL, a negative answer without an SOA, a TTL of 0
            with ``min_ttl`` 0).
        """
        if answer.status == "servfail":
            return 0
        if answer.status in ("nxdomain", "nodata") and answer.soa is None:
            return 0
        ttl = self.clamp(answer.ttl)
        if ttl <= 0:
            return 0
        key = (answer.name, answer.rdtype)
        self._entries[key] = _Entry(answer, now + ttl, now + ttl * (1 - PREFETCH_SHARE))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.evicted += 1
        return ttl

    def clear(self) -> None:
        """Forget every answer."""
        self._entries.clear()
