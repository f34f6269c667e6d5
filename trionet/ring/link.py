"""The reliable link between two neighbours: sequence numbers, acknowledgements, resending, de-duplication.

A TCP connection between neighbours can drop at any moment; the link it
carries must not lose, repeat or reorder a data frame. :class:`LinkState` is
one end of that link, kept across reconnects, and holds every rule about
the frames it receives: their ring epoch, their direction, and their place
in the sequence. Pure: it sees frames and numbers, never a socket or a clock.
"""

from __future__ import annotations

import enum
from collections import deque

from trionet.ring.frames import (
    Ack,
    Bye,
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


class LinkState:
    """One end of a link between neighbours, kept across TCP reconnects.

    Outgoing data frames get consecutive sequence numbers and stay in
    :attr:`unacked` until the peer acknowledges them; after a reconnect,
    :meth:`on_connect` returns what must be sent again. Every frame received
    after the handshake goes through :meth:`receive`, which refuses what a
    correct neighbour never sends (another ring epoch, a token or message of
    the wrong direction, a gap in the sequence, a handshake frame) and tells
    a duplicate (the peer resent it because our ack was lost) from a new frame.

    Args:
        epoch: the ring epoch written in every frame, and required of every
            data frame received.
        incoming: the direction of the tokens and messages this link brings
            (clockwise from the previous node, counter-clockwise from the
            next); None accepts either (tests of sequencing alone).
    """

    def __init__(self, epoch: int = 1, incoming: Direction | None = None) -> None:
        self.epoch = epoch
        self.incoming = incoming
        self.next_seq = 1
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.recv_next = 1
        self.resent = 0
        self.duplicates = 0

    def wrap(self, frame: DataFrame) -> bytes:
        """Number ``frame``, keep it until acknowledged, and return its bytes."""
        seq = self.next_seq
        self.next_seq += 1
        data = encode_frame(frame, seq=seq, epoch=self.epoch)
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
            RemoteProtocolError: a data frame of another ring epoch, a token
                or message of the direction this link does not carry, a gap
                (a later frame before an earlier one), an ``ACK`` of a frame
                never sent, or a frame that belongs to the handshake.
        """
        if seq:  # a data frame (the decoder numbers exactly those)
            if epoch != self.epoch:
                raise RemoteProtocolError(f"frame of ring epoch {epoch}, this ring is at {self.epoch}")
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
