"""The reliable link between two neighbours: sequence numbers, acknowledgements, resending, de-duplication.

A TCP connection between neighbours can drop at any moment; the link it
carries must not lose, repeat or reorder a data frame. :class:`LinkState` is
one end of that link, kept across reconnects, and holds every rule about
the frames it receives: their ring epoch, their direction, and their place
in the sequence. Pure: it sees frames and numbers, never a socket or a clock.
"""

from __future__ import annotations

from collections import deque

from trionet.ring.frames import DataFrame, LocalProtocolError, RemoteProtocolError, encode_frame

__all__ = ["LinkState"]


class LinkState:
    """One end of a link between neighbours, kept across TCP reconnects.

    Outgoing data frames get consecutive sequence numbers and stay in
    :attr:`unacked` until the peer acknowledges them; after a reconnect,
    :meth:`on_connect` returns what must be sent again. Incoming data frames
    are checked with :meth:`classify`: a number already seen is a duplicate
    (the peer resent it because our ack was lost) and is dropped.

    Args:
        epoch: the ring epoch written in every frame.
    """

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch
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

    def classify(self, seq: int) -> bool:
        """Return True for the next expected frame, False for a duplicate.

        Raises:
            RemoteProtocolError: a gap: a later frame before an earlier one.
        """
        if seq < self.recv_next:
            self.duplicates += 1
            return False
        if seq > self.recv_next:
            raise RemoteProtocolError(f"frame {seq} arrived before frame {self.recv_next}")
        return True

    def mark_received(self, seq: int) -> None:
        """Frame ``seq`` (just classified as new) was handed to the node."""
        if seq != self.recv_next:
            raise LocalProtocolError(f"marking frame {seq} while expecting {self.recv_next}")
        self.recv_next += 1

    @property
    def ack(self) -> int:
        """The cumulative acknowledgement to send: the last frame received in order."""
        return self.recv_next - 1
