"""Hypothesis strategies for the ring's frames, shared by the codec and the link-state tests."""

from __future__ import annotations

from hypothesis import strategies as st

from trionet.ring.frames import Direction, Finalize, Message, Probe, StopRequest, Token

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
directions = st.sampled_from(list(Direction))

data_frames = st.one_of(
    st.builds(Token, directions, u32, st.booleans()),
    st.builds(Message, directions, u32, u32, u64, st.text(max_size=200), st.booleans()),
    st.builds(Finalize, st.booleans(), u64, u64, u64, u32),
    st.builds(StopRequest, u32),
    st.just(Probe()),
)
"""Every frame that travels in a link's sequence (and so carries a sequence number and an epoch)."""
