"""Who a node dials and whom it accepts once nodes can die (sans-IO): the ring closes around dead nodes.

The ring file fixes the order. A node's *successor* is the first node after
it, along that order, that it can reach (its ring-file next node while that
one lives); its *predecessor* the closest node before it that dials it.
``docs/protocol/ring.md`` ("Bypass") gives the rules and their timelines;
these functions are the rules, the trio layer (:mod:`trionet.ring.node`)
times them.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["admits", "between", "candidates", "distance"]


def distance(ring: Sequence[int], a: int, b: int) -> int:
    """Steps clockwise from ``a`` to ``b`` (0 when they are the same node, ``len(ring)`` never)."""
    return (ring.index(b) - ring.index(a)) % len(ring)


def candidates(ring: Sequence[int], me: int) -> list[int]:
    """The nodes ``me`` may dial, in the order it tries them: the ones after it, then itself.

    Itself last: a lone survivor closes the ring on itself (a ring of one).
    """
    i = ring.index(me)
    return [*ring[i + 1 :], *ring[:i], me]


def between(ring: Sequence[int], a: int, b: int) -> list[int]:
    """The nodes strictly between ``a`` and ``b`` going clockwise."""
    i, n = ring.index(a), len(ring)
    return [ring[(i + k) % n] for k in range(1, distance(ring, a, b))] if a != b else [*ring[i + 1 :], *ring[:i]]


def admits(ring: Sequence[int], me: int, dialer: int, current: int | None, current_up: bool) -> str | None:
    """Whether ``me`` takes ``dialer`` as its predecessor; None if yes, else the reason to give it.

    Args:
        ring: the ids in ring-file order.
        me: the accepting node.
        dialer: the node that connects as predecessor.
        current: the predecessor ``me`` has now (or had last), None if none.
        current_up: whether that predecessor's link works now.

    The ring-file previous node is always taken. A node further back is
    taken when the one it would bypass cannot be the live predecessor: no
    working link from it, or the working link comes from even further back
    (or from the dialer itself, reconnecting).
    """
    n = len(ring)
    back = distance(ring, dialer, me) or n  # a node dialing itself is the farthest back of all
    if back == 1 or current is None or not current_up or current == dialer:
        return None
    if (distance(ring, current, me) or n) >= back:
        return None
    return f"node {current}, between node {dialer} and node {me}, is alive"
