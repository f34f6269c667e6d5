"""Admission control shared by the services: a capacity limit with a bounded FIFO waiting room.

:class:`AdmissionLimit` lets at most ``limit`` holders in at once (a
:class:`trio.CapacityLimiter` does the counting and the fair, first-come
first-served hand-off). Whoever arrives while every slot is taken joins a
waiting room of at most ``backlog`` places, learns its place in line (and
every later change of it) through a callback, and is admitted the moment a
slot frees, in arrival order. A waiter that is cancelled (its client went
away) leaves the line at once, and the places behind it move up.

Two optional rules keep one client from taking the room for itself: a
*per-key share* (``per_key``: at most that many slots plus places in line
held under one key, such as a client address, see :func:`client_key`), and
a *wait timeout* (``enter(timeout=...)``: time in line is bounded).

Nothing here knows about sockets: the caller decides what "being told your
place" means (a line of text, nothing at all) and when a waiter has gone.

Example::

    room = AdmissionLimit(3, backlog=10)
    async with room.admit(on_wait=tell_client_their_place) as ticket:
        ...  # at most 3 tasks are here at once
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

__all__ = ["AdmissionLimit", "ShareExceeded", "Ticket", "WaitTimeout", "WaitingRoomFull", "client_key"]

IPV6_SHARE_PREFIX = 64
"""IPv6 clients share one key per /64: a single host is usually given a whole /64."""


@functools.lru_cache(maxsize=4096)
def client_key(host: str) -> str:
    """The key under which a client address's share is counted.

    An IPv4 address is its own key (an IPv4-mapped IPv6 address counts as
    the IPv4 address), an IPv6 address counts as its /64 network, anything
    else (a name, ``memory`` in tests) as itself.

    Remembered for the last 4096 hosts: parsing an address with
    :mod:`ipaddress` cost 2 to 3% of a short DNS-over-TLS connection's
    server time in a profile, and clients come back.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_SHARE_PREFIX), strict=False))
    return str(address)


class ShareExceeded(Exception):
    """The arrival's key already holds ``per_key`` slots and places in line."""

    def __init__(self, key: Hashable, per_key: int) -> None:
        super().__init__(f"{key} already holds {per_key} slot(s) and place(s) in line, the most one client may hold")
        self.key = key
        self.per_key = per_key


class WaitTimeout(Exception):
    """No slot came free within the waiter's ``timeout``; it has left the line."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no slot came free within {timeout:g} seconds")
        self.timeout = timeout


class WaitingRoomFull(Exception):
    """Every slot is taken and the waiting room holds ``backlog`` waiters already."""

    def __init__(self, limit: int, backlog: int) -> None:
        super().__init__(f"all {limit} slots are taken and {backlog} client(s) are already waiting")
        self.limit = limit
        self.backlog = backlog


@dataclass(eq=False)
class Ticket:
    """One holder's passage through an :class:`AdmissionLimit`.

    Attributes:
        arrived: when :meth:`AdmissionLimit.admit` was entered (trio time).
        place_on_arrival: place in line on arrival, 1 being next; 0 when
            admitted at once.
        admitted: when the slot was granted (trio time); None while waiting.
        key: the key whose share it counts against (None: no share).
    """

    arrived: float
    place_on_arrival: int = 0
    admitted: float | None = None
    key: Hashable = None

    @property
    def waited(self) -> float:
        """Seconds spent in the waiting room (so far, while still waiting)."""
        end = self.admitted if self.admitted is not None else trio.current_time()
        return end - self.arrived


OnWait = Callable[[int], Awaitable[None]]


class AdmissionLimit:
    """At most ``limit`` holders at once; up to ``backlog`` more wait their turn in FIFO order.

    Args:
        limit: how many holders may be admitted at once (at least 1).
        backlog: how many may wait; ``None`` for no bound, ``0`` for no
            waiting room at all (a full limit turns everyone away).
        per_key: how many slots plus places in line one key (see
            :meth:`enter`) may hold at once; ``None`` for no share.
    """

    def __init__(self, limit: int, backlog: int | None = None, *, per_key: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if backlog is not None and backlog < 0:
            raise ValueError("backlog must be None or at least 0")
        if per_key is not None and per_key < 1:
            raise ValueError("per_key must be None or at least 1")
        self._limiter = trio.CapacityLimiter(limit)
        self.backlog = backlog
        self.per_key = per_key
        self._held: collections.Counter[Hashable] = collections.Counter()
        self.over_share = 0
        """How many arrivals were turned away because their key held its share."""
        self.timed_out = 0
        """How many waiters left the line at their wait timeout."""
        self._line: list[Ticket] = []
        self._moved = trio.Event()
        self.admitted_total = 0
        """How many holders have been admitted since creation."""
        self.turned_away = 0
        """How many arrivals found the waiting room full."""

    @property
    def limit(self) -> int:
        """How many holders may be admitted at once."""
        return int(self._limiter.total_tokens)

    @property
    def in_use(self) -> int:
        """How many holders are admitted now."""
        return self._limiter.borrowed_tokens

    @property
    def waiting(self) -> int:
        """How many holders are in the waiting room now."""
        return len(self._line)

    def held_by(self, key: Hashable) -> int:
        """How many slots and places in line ``key`` holds now."""
        return self._held.get(key, 0)

    def place(self, ticket: Ticket) -> int:
        """Return ``ticket``'s place in line (1 is next), or 0 if it is not waiting."""
        try:
            return self._line.index(ticket) + 1
        except ValueError:
            return 0

    @asynccontextmanager
    async def admit(
        self, *, on_wait: OnWait | None = None, key: Hashable = None, timeout: float = math.inf
    ) -> AsyncIterator[Ticket]:
        """Wait for a slot (in FIFO order) and hold it for the body of the ``async with``.

        The same as :meth:`enter` then :meth:`leave`, which see.
        """
        ticket = await self.enter(on_wait=on_wait, key=key, timeout=timeout)
        try:
            yield ticket
        finally:
            self.leave(ticket)

    def try_enter(self, *, key: Hashable = None) -> Ticket | None:
        """Take a free slot now if there is one (and nobody waits for it); else return None.

        Never waits and never joins the line. Every ticket returned must be
        given back with :meth:`leave`.

        Raises:
            ShareExceeded: ``key`` already holds its share (see :meth:`enter`).
        """
        ticket = self._arrive(key)
        try:
            self._limiter.acquire_on_behalf_of_nowait(ticket)
        except trio.WouldBlock:
            self._depart(ticket)
            return None
        ticket.admitted = ticket.arrived
        self.admitted_total += 1
        return ticket

    async def enter(self, *, on_wait: OnWait | None = None, key: Hashable = None, timeout: float = math.inf) -> Ticket:
        """Wait for a slot, in FIFO order, and return the ticket that holds it.

        Every ticket returned must be given back with :meth:`leave`.

        Args:
            on_wait: ``await on_wait(place)`` is called when the caller has to
                wait, with its place in line (1 is next), and again each time
                that place changes. If it raises (the client cannot be told
                because it is gone), the caller leaves the line and the
                exception propagates.
            key: what the arrival's share is counted under (a client
                address); None counts against no share.
            timeout: the longest time in line, in seconds.

        Raises:
            ShareExceeded: ``key`` already holds ``per_key`` slots and places
                in line. Raised before any waiting.
            WaitingRoomFull: no slot is free and the waiting room is full.
                Raised before any waiting, so the caller can answer "busy" at once.
            WaitTimeout: no slot came free within ``timeout`` seconds.

        Error handling: a waiter that is cancelled, times out, or whose
        ``on_wait`` raises, leaves the line and never holds a slot.
        ``on_wait`` errors arrive inside an ``ExceptionGroup``.
        """
        ticket = self._arrive(key)
        try:
            try:
                self._limiter.acquire_on_behalf_of_nowait(ticket)
            except trio.WouldBlock:
                if self.backlog is not None and len(self._line) >= self.backlog:
                    self.turned_away += 1
                    raise WaitingRoomFull(self.limit, self.backlog) from None
                self._line.append(ticket)
                ticket.place_on_arrival = len(self._line)
                try:
                    with trio.move_on_after(timeout) as timer:
                        await self._wait(ticket, on_wait)
                finally:
                    self._line.remove(ticket)
                    self._moved.set()
                    self._moved = trio.Event()
                if timer.cancelled_caught:
                    # (a slot handed over at the last moment was given back by _wait)
                    self.timed_out += 1
                    raise WaitTimeout(timeout)
        except BaseException:
            self._depart(ticket)
            raise
        ticket.admitted = trio.current_time()
        self.admitted_total += 1
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Give back the slot ``ticket`` holds; the first waiter is admitted at once.

        Raises:
            RuntimeError: ``ticket`` holds no slot (it was given back already).
        """
        self._limiter.release_on_behalf_of(ticket)
        self._depart(ticket)

    def _arrive(self, key: Hashable) -> Ticket:
        if key is not None and self.per_key is not None:
            if self._held[key] >= self.per_key:
                self.over_share += 1
                raise ShareExceeded(key, self.per_key)
            self._held[key] += 1
        return Ticket(arrived=trio.current_time(), key=key if self.per_key is not None else None)

    def _depart(self, ticket: Ticket) -> None:
        if ticket.key is not None:
            self._held[ticket.key] -= 1
            if not self._held[ticket.key]:
                del self._held[ticket.key]

    async def _wait(self, ticket: Ticket, on_wait: OnWait | None) -> None:
        acquired = False
        try:
            async with trio.open_nursery() as nursery:
                if on_wait is not None:
                    nursery.start_soon(self._report_place, ticket, on_wait)
                await self._limiter.acquire_on_behalf_of(ticket)
                acquired = True
                nursery.cancel_scope.cancel()
        except BaseException:
            # Cancelled (or the report failed) after the hand-off: give the
            # slot back rather than leak it.
            if acquired:
                self._limiter.release_on_behalf_of(ticket)
            raise

    async def _report_place(self, ticket: Ticket, on_wait: OnWait) -> None:
        told = 0
        while True:
            moved = self._moved
            place = self.place(ticket)
            if place and place != told:
                await on_wait(place)
                told = place
            if moved is self._moved:
                await moved.wait()
