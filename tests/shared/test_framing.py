"""The shared sans-IO framers: any split of the input gives the same frames, limits hold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionet.framing import (
    EOF,
    NEED_DATA,
    Frame,
    FramingError,
    LengthPrefixFramer,
    LineFramer,
    Oversized,
    TruncatedFrame,
    encode_length_prefixed,
)


def drain(framer, next_event=None) -> list:
    next_event = next_event or framer.next_event
    events = []
    while (event := next_event()) is not NEED_DATA:
        events.append(event)
        if event is EOF:
            break
    return events


def feed_in_chunks(framer, data: bytes, cuts: list[int], next_event=None) -> list:
    events = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:]):
        framer.receive_data(data[a:b])
        events += drain(framer, next_event)
    framer.receive_data(b"")
    return events + drain(framer, next_event)


lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20)


@given(lines, st.lists(st.integers(0, 10_000), max_size=30))
def test_line_framer_any_split_gives_the_lines(payloads, cuts):
    data = b"".join(p + b"\n" for p in payloads)
    events = feed_in_chunks(LineFramer(64), data, cuts)
    expected = [Frame(p[:-1] if p.endswith(b"\r") else p) for p in payloads]
    assert events == expected + [EOF]


@given(lines, st.integers(1, 30), st.lists(st.integers(0, 10_000), max_size=30))
def test_line_framer_skips_long_lines_and_keeps_the_rest(payloads, limit, cuts):
    data = b"".join(p + b"\n" for p in payloads)
    events = feed_in_chunks(LineFramer(limit), data, cuts)
    expected = []
    for p in payloads:
        body = p[:-1] if p.endswith(b"\r") else p
        expected.append(Frame(body) if len(body) <= limit else Oversized(limit))
    assert events == expected + [EOF]


def test_line_framer_bounds_its_buffer_for_an_endless_line():
    framer = LineFramer(100)
    framer.receive_data(b"x" * 150)
    assert framer.next_event() == Oversized(100)
    for _ in range(1000):  # a megabyte with no newline is dropped as it comes
        framer.receive_data(b"y" * 1000)
        assert framer.next_event() is NEED_DATA
        assert len(framer._buf) <= 1000
    framer.receive_data(b"tail\nnext\n")
    assert drain(framer) == [Frame(b"next")]


def test_line_framer_reports_a_partial_last_line():
    framer = LineFramer(10)
    framer.receive_data(b"one\ntw")
    framer.receive_data(b"")
    assert drain(framer) == [Frame(b"one"), TruncatedFrame(2), EOF]


def test_data_after_eof_is_an_error():
    framer = LineFramer(10)
    framer.receive_data(b"")
    with pytest.raises(FramingError):
        framer.receive_data(b"x")


@given(
    st.lists(st.binary(max_size=300), max_size=15),
    st.sampled_from([1, 2, 4]),
    st.integers(0, 400),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_length_prefix_framer_any_split(payloads, prefix, limit, cuts):
    payloads = [p[: (1 << (8 * prefix)) - 1] for p in payloads]
    data = b"".join(encode_length_prefixed(p, prefix) for p in payloads)
    events = feed_in_chunks(LengthPrefixFramer(prefix, limit), data, cuts)
    expected = [Frame(p) if len(p) <= limit else Oversized(limit) for p in payloads]
    assert events == expected + [EOF]
    # next_payload: the same events, a frame as its bare payload.
    framer = LengthPrefixFramer(prefix, limit)
    bare = feed_in_chunks(framer, data, cuts, framer.next_payload)
    assert bare == [e.payload if isinstance(e, Frame) else e for e in expected] + [EOF]
    assert all(type(e) is bytes for e in bare if not isinstance(e, Oversized) and e is not EOF)


def test_length_prefix_with_no_body_is_truncated():
    framer = LengthPrefixFramer(2, 100)
    framer.receive_data(b"\x00\x10abc")
    assert framer.next_event() is NEED_DATA
    framer.receive_data(b"")
    assert drain(framer) == [TruncatedFrame(5), EOF]


def test_encode_refuses_what_the_prefix_cannot_hold():
    with pytest.raises(FramingError):
        encode_length_prefixed(b"x" * 256, 1)
