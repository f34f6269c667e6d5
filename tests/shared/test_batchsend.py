"""trionet.batchsend: many sockets' bytes in one io_submit, and nothing lost or sent twice when a socket takes less."""

from __future__ import annotations

import contextlib
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.batchsend import BatchSender


@pytest.fixture
def sender():
    sender = BatchSender.open()
    assert sender is not None, "Linux AIO (io_setup) refused on this machine"
    yield sender
    sender.close()


def _pairs(count: int, stack: contextlib.ExitStack) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        pairs.append((stack.enter_context(ours), stack.enter_context(theirs)))
    return pairs


def _fill(sock: socket.socket) -> None:
    """Write until the socket's send buffer has no room left."""
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.send(b"f" * 65536)


def _received(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    return data


def test_each_socket_gets_its_own_bytes_in_one_call(sender):
    with contextlib.ExitStack() as stack:
        pairs = _pairs(5, stack)
        pending = [bytearray(b"answer %d" % i) for i in range(5)]
        assert sender.send([(ours.fileno(), out) for (ours, _), out in zip(pairs, pending)]) == 1  # one io_submit
        assert pending == [b""] * 5
        assert [_received(theirs) for _, theirs in pairs] == [b"answer %d" % i for i in range(5)]


def test_more_sockets_than_one_call_takes_go_in_several(sender):
    count = BatchSender.CAPACITY + 3
    with contextlib.ExitStack() as stack:
        pairs = _pairs(count, stack)
        pending = [bytearray(b"%d" % i) for i in range(count)]
        assert sender.send([(ours.fileno(), out) for (ours, _), out in zip(pairs, pending)]) == 2
        assert not any(pending)
        assert [_received(theirs) for _, theirs in pairs] == [b"%d" % i for i in range(count)]


def test_what_a_socket_does_not_take_is_left_for_the_caller_and_the_others_go(sender):
    with contextlib.ExitStack() as stack:
        (full, full_peer), (closed, closed_peer), (fine, fine_peer) = _pairs(3, stack)
        _fill(full)  # no room: EAGAIN
        closed_peer.close()  # EPIPE
        pending = [bytearray(b"to full"), bytearray(b"to closed"), bytearray(b"to fine")]
        sender.send([(full.fileno(), pending[0]), (closed.fileno(), pending[1]), (fine.fileno(), pending[2])])
        assert pending == [b"to full", b"to closed", b""]
        assert _received(fine_peer) == b"to fine"
        assert set(_received(full_peer)) == {ord("f")}  # only what filled it, none of the answer
        with pytest.raises(BrokenPipeError):  # the caller's own write then sees why
            closed.send(pending[1])


def test_a_closed_descriptor_and_those_after_it_are_left_for_the_caller(sender):
    # io_submit stops at a request it refuses (EBADF): that one and the ones
    # after it were never written, and the caller's own writes take over.
    with contextlib.ExitStack() as stack:
        [(first, first_peer), (last, last_peer)] = _pairs(2, stack)
        gone = socket.socket()
        number = gone.detach()
        socket.close(number)
        pending = [bytearray(b"first"), bytearray(b"nowhere"), bytearray(b"last")]
        sender.send([(first.fileno(), pending[0]), (number, pending[1]), (last.fileno(), pending[2])])
        assert pending == [b"", b"nowhere", b"last"]
        assert _received(first_peer) == b"first" and _received(last_peer) == b""


def test_bytes_past_the_buffer_wait_for_the_callers_own_write(sender):
    with contextlib.ExitStack() as stack:
        pairs = _pairs(3, stack)
        for ours, _ in pairs:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * BatchSender.BUFFER)
        pending = [bytearray(b"a" * 10), bytearray(b"b" * BatchSender.BUFFER), bytearray(b"c" * 10)]
        sender.send([(ours.fileno(), out) for (ours, _), out in zip(pairs, pending)])
        # The second does not fit beside the first: it and everything after it stay.
        assert pending == [b"", b"b" * BatchSender.BUFFER, b"c" * 10]
        assert _received(pairs[0][1]) == b"a" * 10


def test_a_closed_sender_sends_nothing(sender):
    sender.close()
    sender.close()  # once is enough; twice is harmless
    with contextlib.ExitStack() as stack:
        [(ours, theirs)] = _pairs(1, stack)
        pending = bytearray(b"kept")
        assert sender.send([(ours.fileno(), pending)]) == 0
        assert pending == b"kept" and _received(theirs) == b""


@pytest.mark.parametrize(("system", "machine"), [("darwin", "x86_64"), ("linux", "s390x")])
def test_where_it_cannot_batch_there_is_no_sender(monkeypatch, system, machine):
    import platform
    import sys

    monkeypatch.setattr(sys, "platform", system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert BatchSender.open() is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=40_000), st.sampled_from(["room", "full", "closed", "little"])),
        min_size=1,
        max_size=12,
    )
)
def test_every_byte_goes_once_or_stays_for_the_caller(cases):
    # Whatever each socket takes, what its peer received and what stays in
    # its pending bytes together are exactly what was given, in order.
    sender = BatchSender.open()
    assert sender is not None
    with sender_closed(sender), contextlib.ExitStack() as stack:
        pairs = _pairs(len(cases), stack)
        given_bytes, pending = [], []
        for index, ((size, state), (ours, theirs)) in enumerate(zip(cases, pairs)):
            data = bytes([65 + index]) * size
            given_bytes.append(data)
            pending.append(bytearray(data))
            if state == "full":
                _fill(ours)
            elif state == "closed":
                theirs.close()
            elif state == "little":  # room for some of it
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                _fill(ours)
                _received(theirs)
        sender.send([(ours.fileno(), out) for (ours, _), out in zip(pairs, pending)])
        for (size, state), (_, theirs), data, out in zip(cases, pairs, given_bytes, pending):
            if state == "closed":
                assert out == data
                continue
            got = bytes(b for b in _received(theirs) if b != ord("f"))  # (what filled it is not ours)
            assert got + out == data
            if state == "room":
                assert not out or sum(len(d) for d in given_bytes) > BatchSender.BUFFER


@contextlib.contextmanager
def sender_closed(sender: BatchSender):
    try:
        yield
    finally:
        sender.close()
