"""Sans-IO per-address response rate limit for the UDP port: one token bucket per client address.

A spoofed-source flood can name any number of addresses, so the table is
bounded: past ``max_addresses`` the address seen least recently is
forgotten (it starts again with a full bucket if it comes back). Time is
passed in; nothing here reads a clock.
"""

from __future__ import annotations

import collections

__all__ = ["RATE_ADDRESSES", "RateLimiter"]

RATE_ADDRESSES = 10_000
"""Client addresses whose buckets are remembered at once."""


class RateLimiter:
    """At most ``rate`` answers per second per key, with bursts of up to ``rate`` answers.

    Args:
        rate: answers per second per key; 0 turns the limit off.
        max_addresses: keys remembered at once (least recently seen forgotten first).

    A key is a client address as :func:`trionet.limits.client_key` gives it
    (an IPv6 client counts as its /64), so one client cannot escape its
    bucket by changing the low bits of its address.
    """

    def __init__(self, rate: float, max_addresses: int = RATE_ADDRESSES) -> None:
        if rate < 0 or max_addresses < 1:
            raise ValueError("rate must be >= 0 and max_addresses >= 1")
        self.rate = rate
        self.max_addresses = max_addresses
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Take one token from ``key``'s bucket at time ``now``; False when it is empty (drop the answer)."""
        if not self.rate:
            return True
        buckets = self._buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens = self.rate
            if len(buckets) >= self.max_addresses:
                buckets.popitem(last=False)
        else:
            tokens, last = entry
            tokens = min(self.rate, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        buckets[key] = (tokens, now)  # most recently seen last
        return allowed
