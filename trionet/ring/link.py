"""The reliable link between two neighbours: sequence numbers, acknowledgements, resending, de-duplication.

A TCP connection between neighbours can drop at any moment; the link it
carries must not lose, repeat or reorder a data frame. :class:`LinkState` is
one end of that link, kept across reconnects, and holds every rule about
the frames it receives: their ring epoch, their direction, and their place
in the sequence. Pure: it sees frames and numbers, never a socket or a clock.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque

from trionet.ring.frames import (
    Ack,
    Bye,
    Heartbeat,
    DataFrame,
    Direction,
    LinkFrame,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Token,
    encode_frame,
)

__all__ = ["Arrival", "LinkState"]

_DIRECTED = (Token, Message)
"""Data frames that travel one way only; each link carries one direction of them."""


class Arrival(enum.Enum):
    """What a frame received on an established link is, for the layer that carries it out."""

    NEW = "new"
    """The next data frame: act on it, then :meth:`LinkState.mark_received`; acknowledge it."""
    DUPLICATE = "duplicate"
    """A data frame that arrived before (resent after a lost ack): drop it, but acknowledge it."""
    ACKED = "acked"
    """An acknowledgement, applied: frames up to it left :attr:`LinkState.unacked`."""
    BYE = "bye"
    """The peer has finished and needs nothing more on this link."""
    HEARTBEAT = "heartbeat"
    """The peer is alive (it had nothing else to say)."""


class LinkState:
    """One end of a link between neighbours, kept across TCP reconnects.

    Outgoing data frames get consecutive sequence numbers and stay in
    :attr:`unacked` until the peer acknowledges them; after a reconnect,
    :meth:`on_connect` returns what must be sent again. Every frame received
    after the handshake goes through :meth:`receive`, which refuses what a
    correct neighbour never sends (a token or message of the wrong direction,
    a gap in the sequence, a handshake frame) and tells a duplicate (the peer
    resent it because our ack was lost) from a new frame. A frame's ring
    epoch is the node's business (:class:`~trionet.ring.core.NodeCore` drops
    the frames of other epochs), not the link's.

    A link state has a random :attr:`session`; the greetings of a new
    connection carry both ends' sessions, and the connection resumes this
    state only when each end still has the session the other saw last
    (:meth:`resumes`); otherwise both ends :meth:`reset` (a new peer, a
    restarted one): sequence numbers start again and the unacknowledged
    frames are dropped (the ring's epochs recover what they held).

    Args:
        epoch: the ring epoch written in the frames :meth:`wrap` numbers
            unless it is given one.
        incoming: the direction of the tokens and messages this link brings
            (clockwise from the previous node, counter-clockwise from the
            next); None accepts either (tests of sequencing alone).
        peer: the node at the other end (None: not yet known).
    """

    def __init__(self, epoch: int = 1, incoming: Direction | None = None, peer: int | None = None) -> None:
        self.epoch = epoch
        self.incoming = incoming
        self.peer = peer
        self.peer_session = 0
        self.resent = 0
        self.duplicates = 0
        self.resets = 0
        self._fresh()

    def _fresh(self) -> None:
        self.session = secrets.randbits(63) + 1
        self._next_session = secrets.randbits(63) + 1  # for the next peer, announced before it is taken
        self._clear()

    def _clear(self) -> None:
        self.next_seq = 1
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.recv_next = 1

    def greeting(self, peer: int) -> tuple[int, int, int]:
        """The dialer's ``(recv_next, session, peer_session)`` to greet ``peer`` with (nothing changes yet).

        For a peer other than the one this state is for, the greeting of a
        fresh state: what is queued was for the other node.
        """
        if peer != self.peer:
            return 1, self._next_session, 0
        return self.recv_next, self.session, self.peer_session

    def answer(self, peer: int, peer_session: int, seen_session: int) -> tuple[int, int, int]:
        """The acceptor's greeting to ``peer``, which greeted with its session and the one it saw from us.

        The acceptor decides alone whether the link continues, on what both
        greetings say, and tells the dialer by echoing the dialer's session
        as its ``peer_session`` (0: start again). It continues when each end
        still has what the other saw last, or on the very first contact
        (neither ever saw the other). Nothing changes until :meth:`connect`.
        """
        if peer != self.peer:
            go_on = seen_session == 0
            return (1, self._next_session, peer_session if go_on else 0)
        # The third case: a stale greeting. This end answered an earlier
        # connection, the dialer finished it (it has our session), but this
        # end never read the dialer's proof (a reader that stalled): it
        # never learned the dialer's session, nor read a frame of it. The
        # dialer numbered from our answer's recv_next, which is still ours:
        # resuming loses nothing (a reset here made a needless new view).
        go_on = (
            (seen_session == 0 and self.peer_session == 0)
            or (seen_session == self.session and peer_session == self.peer_session)
            or (seen_session == self.session and self.peer_session == 0)
        )
        return self.recv_next, self.session, peer_session if go_on else 0

    def connect(self, peer: int, peer_session: int, resume: bool, peer_recv_next: int) -> tuple[bytes, bool]:
        """A connection's handshake with ``peer`` is over: resume, or start again; return ``(bytes to resend, reset)``.

        ``resume`` is the acceptor's decision (:meth:`answer`): the dialer
        reads it in the answer, the acceptor remembers it. On a resume the
        frames the peer has not got are resent; otherwise the sequence
        state starts again on both ends (``reset`` True; so it is for a new
        peer, which gets a fresh state).

        Raises:
            RemoteProtocolError: a resumed peer asks for a frame that is gone.
        """
        switched = peer != self.peer
        if switched:
            self.peer = peer
            self.session = self._next_session
            self._next_session = secrets.randbits(63) + 1
            self._clear()
        self.peer_session = peer_session
        if resume:
            return self.on_connect(peer_recv_next), switched
        self.resets += 1
        self._clear()
        return b"", True

    def wrap(self, frame: DataFrame, epoch: int | None = None) -> bytes:
        """Number ``frame``, keep it until acknowledged, and return its bytes (sent in ``epoch``)."""
        seq = self.next_seq
        self.next_seq += 1
        data = encode_frame(frame, seq=seq, epoch=self.epoch if epoch is None else epoch)
        self.unacked.append((seq, data))
        return data

    def on_ack(self, ack: int) -> None:
        """The peer has every frame up to ``ack``.

        Raises:
            RemoteProtocolError: ``ack`` names a frame never sent.
        """
        if ack >= self.next_seq:
            raise RemoteProtocolError(f"ack {ack} for a frame never sent (next is {self.next_seq})")
        while self.unacked and self.unacked[0][0] <= ack:
            self.unacked.popleft()

    def on_connect(self, peer_recv_next: int) -> bytes:
        """A new connection is up and the peer expects ``peer_recv_next``: return the bytes to resend."""
        self.on_ack(peer_recv_next - 1)
        if self.unacked and self.unacked[0][0] != peer_recv_next:
            raise RemoteProtocolError(
                f"peer expects frame {peer_recv_next} but the oldest unacknowledged one is {self.unacked[0][0]}"
            )
        self.resent += len(self.unacked)
        return b"".join(data for _, data in self.unacked)

    def receive(self, frame: DataFrame | LinkFrame, seq: int, epoch: int) -> Arrival:
        """Check one frame received after the handshake (a :class:`~trionet.ring.frames.Received`'s fields).

        A duplicate is counted in :attr:`duplicates`; an ``ACK`` is applied
        (:meth:`on_ack`). A new data frame is not yet marked received: the
        caller does that once the frame is safely handed on
        (:meth:`mark_received`), so that a frame lost to a cancellation
        before then is accepted again when resent.

        Raises:
            RemoteProtocolError: a token
                or message of the direction this link does not carry, a gap
                (a later frame before an earlier one), an ``ACK`` of a frame
                never sent, or a frame that belongs to the handshake.
        """
        if seq:  # a data frame (the decoder numbers exactly those)
            if self.incoming is not None and type(frame) in _DIRECTED and frame.direction is not self.incoming:
                raise RemoteProtocolError(
                    f"{frame.direction.label} frame on a link that carries {self.incoming.label}"
                )
            if seq < self.recv_next:
                self.duplicates += 1
                return Arrival.DUPLICATE
            if seq > self.recv_next:
                raise RemoteProtocolError(f"frame {seq} arrived before frame {self.recv_next}")
            return Arrival.NEW
        if type(frame) is Ack:
            self.on_ack(frame.ack)
            return Arrival.ACKED
        if type(frame) is Heartbeat:
            return Arrival.HEARTBEAT
        if type(frame) is Bye:
            return Arrival.BYE
        raise RemoteProtocolError(f"unexpected {type(frame).__name__} frame after the handshake")

    def mark_received(self, seq: int) -> None:
        """Frame ``seq`` (just received as :attr:`Arrival.NEW`) was handed on; expect the next one."""
        if seq != self.recv_next:
            raise LocalProtocolError(f"marking frame {seq} while expecting {self.recv_next}")
        self.recv_next += 1

    @property
    def ack(self) -> int:
        """The cumulative acknowledgement to send: the last frame received in order."""
        return self.recv_next - 1
