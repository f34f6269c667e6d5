"""Issue 9 on real sockets: outsiders without the ring's secret, wrong secrets, forged frames, the CLI's refusals.

Each attacker is a plain TCP client or listener in the test, speaking the
ring protocol with the codec; the nodes are real :class:`RingNode`\\ s on
127.0.0.1 (real clock: real sockets and a mock clock give false alarms).
"""

from __future__ import annotations

import io
import json
import os
import secrets

import pytest
import trio
from click.testing import CliRunner

from trionet.framing import EOF
from trionet.ring.cli import ring
from trionet.ring.config import RingConfig
from trionet.ring.demo import free_ports
from trionet.ring.handshake import Side, make_proof
from trionet.ring.node import NodeOptions, RingError, RingNode, request_stop
from trionet.ring.frames import (
    Heartbeat,
    NONCE_BYTES,
    Auth,
    Direction,
    Finalize,
    FrameDecoder,
    Hello,
    Message,
    Reject,
    Role,
    Stop,
    encode_frame,
)
from trionet.serving import receive_event

from .conftest import RingProcess, write_ring

SECRET = b"the ring's secret"
FAST = NodeOptions(connect_timeout=20.0, handshake_timeout=5.0, backoff_initial=0.01, backoff_max=0.1)


def _hello(config: RingConfig, node_id: int, role: Role, *, secured: bool, recv_next: int = 1) -> Hello:
    return Hello(node_id, role, config.fingerprint, recv_next, secured, secrets.token_bytes(NONCE_BYTES))


async def _frames_until_closed(stream: trio.abc.Stream, decoder: FrameDecoder) -> list:
    """Every frame the node sends until it closes the connection (bounded by the caller), heartbeats aside."""
    frames = []
    try:
        while (event := await receive_event(stream, decoder)) is not EOF:
            if not isinstance(event.frame, Heartbeat):
                frames.append(event.frame)
    except (trio.BrokenResourceError, OSError):
        pass
    return frames


async def _pose_as_predecessor(config, target: int, pose_as: int, *, secured: bool, secret: bytes, then: list) -> list:
    """Connect to ``target`` as its previous node ``pose_as``, prove with ``secret``, send ``then``; return its frames."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", config.node(target).port)
        async with stream:
            mine = _hello(config, pose_as, Role.PREDECESSOR, secured=secured)
            await stream.send_all(encode_frame(mine))
            decoder = FrameDecoder()
            first = await receive_event(stream, decoder)
            if first is EOF:
                return []
            if not isinstance(first.frame, Hello):
                return [first.frame, *await _frames_until_closed(stream, decoder)]
            theirs = first.frame
            proof = make_proof(secret, Side.DIALER, mine, theirs, config.digest)
            data = encode_frame(Auth(proof)) + b"".join(encode_frame(f, seq=n) for n, f in enumerate(then, 1))
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, OSError):
                pass
            return [theirs, *await _frames_until_closed(stream, decoder)]


def _deliveries(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


FORGED = [Finalize(), Message(Direction.CW, 999, 0, 1, "from nowhere")]


async def test_an_outsider_without_the_secret_cannot_finalize_inject_or_replace_a_link():
    # Issue 9: an outsider posing as node 0's previous node sent a forged
    # FINALIZE (node 0 exited 0 claiming the ring was quiet) or a message
    # from a non-existent origin 999. Node 2, node 0's real previous node,
    # starts only after the attacks, so nothing but the attacker could have
    # reached node 0 as node 2.
    config = RingConfig.local(3, ports=free_ports(3))
    out = {i: io.StringIO() for i in range(3)}
    per_node = 30
    nodes = {
        i: RingNode(config, i, messages=[((i + k) % 3, f"m{k}") for k in range(per_node)],
                    deliveries=out[i], options=FAST, secret=SECRET)
        for i in range(3)
    }
    async with trio.open_nursery() as nursery:
        await nursery.start(nodes[0].run)
        await nursery.start(nodes[1].run)
        # No secret at all: refused at the greeting, by name.
        frames = await _pose_as_predecessor(config, 0, 2, secured=False, secret=b"", then=FORGED)
        assert [type(f) for f in frames] == [Reject]
        assert "requires the ring's shared secret" in frames[0].reason
        # Claims a secret, proves with a guess: node 0 answers with its own
        # greeting and proof, then refuses; the forged frames never count.
        for guess in (b"", b"guess", SECRET + b"!"):
            frames = await _pose_as_predecessor(config, 0, 2, secured=True, secret=guess, then=FORGED)
            assert [type(f) for f in frames] == [Hello, Auth, Reject], frames
            assert "failed to prove it knows the ring's secret" in frames[-1].reason
        assert not nodes[0].finished.is_set()
        assert nodes[0].prev_link.connects == 0 and nodes[0].prev_link.state.recv_next == 1
        with trio.fail_after(30):
            summaries = {}

            async def run(i):
                summaries[i] = await nodes[i].run()

            nursery.start_soon(run, 2)
            await nodes[0].finished.wait()
    ring_totals = nodes[0].summary.ring
    assert (ring_totals.requested, ring_totals.sent, ring_totals.delivered) == (False, 3 * per_node, 3 * per_node)
    records = [r for i in range(3) for r in _deliveries(out[i])]
    assert len(records) == 3 * per_node and all(r["origin"] in (0, 1, 2) for r in records)


async def test_an_outsider_cannot_pose_as_the_next_node():
    # The dialer checks the acceptor's proof before sending anything: a
    # process listening at the next node's address without the secret gets
    # a REJECT, never the ring's frames (here the first would be the probe).
    config = RingConfig.local(2, ports=free_ports(2))
    received = bytearray()
    greeted = trio.Event()

    async def impostor(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        event = await receive_event(stream, decoder)
        dialer = event.frame
        mine = _hello(config, 1, Role.SUCCESSOR, secured=True, recv_next=1)
        forged = make_proof(b"guess", Side.ACCEPTOR, dialer, mine, config.digest)
        await stream.send_all(encode_frame(mine) + encode_frame(Auth(forged)))
        received.extend(b"".join(encode_frame(f) for f in await _frames_until_closed(stream, decoder)))
        greeted.set()

    node0 = RingNode(config, 0, options=FAST, secret=SECRET)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(config.node(1).port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, impostor, listeners)
        await nursery.start(node0.run)
        with trio.fail_after(10):
            await greeted.wait()
        nursery.cancel_scope.cancel()
    frames = []
    decoder = FrameDecoder()
    decoder.receive_data(bytes(received))
    while isinstance(event := decoder.next_event(), tuple):
        frames.append(event.frame)
    assert [type(f) for f in frames] == [Reject] and "node 1 failed to prove" in frames[0].reason
    assert not node0.next_link.up and node0.next_link.connects == 0
    assert "failed to prove it knows the ring's secret" in node0.next_link.last_error


@pytest.mark.parametrize(
    "secret1, error",
    [
        (b"another secret", "failed to prove it knows the ring's secret"),
        (None, "shared secret and node 1 has none"),
    ],
    ids=["wrong secret", "no secret"],
)
async def test_a_node_with_a_wrong_or_no_secret_cannot_join(secret1, error):
    config = RingConfig.local(2, ports=free_ports(2))
    options = NodeOptions(connect_timeout=1.5, backoff_initial=0.01, backoff_max=0.1)
    nodes = [RingNode(config, 0, options=options, secret=SECRET), RingNode(config, 1, options=options, secret=secret1)]
    errors: dict[int, str] = {}

    async def run(i):
        try:
            await nodes[i].run()
        except* RingError as group:
            errors[i] = str(group.exceptions[0])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in (0, 1):
                nursery.start_soon(run, i)
    # Both give up: each names the other and the reason in its last error.
    assert set(errors) == {0, 1}
    assert error in errors[0] + errors[1], errors
    assert nodes[0].core.started is False and nodes[1].core.delivered == 0


async def test_ring_stop_needs_the_secret(tmp_path, ring_cmd):
    # Issue 9: anyone could call 'trionet ring stop'. Node 1 is never
    # started, so the ring stays open and node 0 keeps listening.
    ports = free_ports(2)
    config = RingConfig.local(2, ports=ports)
    ring_file = write_ring(tmp_path / "ring.toml", [(n.id, n.host, n.port) for n in config.nodes])
    wrong = tmp_path / "wrong.secret"
    wrong.write_bytes(b"not it\n")
    right = tmp_path / "right.secret"
    right.write_bytes(SECRET + b"\n")  # the final newline is not part of the secret
    os.chmod(wrong, 0o600)
    os.chmod(right, 0o600)
    node0 = RingNode(config, 0, options=FAST, secret=SECRET)
    async with trio.open_nursery() as nursery:
        await nursery.start(node0.run)
        with trio.fail_after(30):
            with pytest.raises(RingError, match="requires the ring's shared secret and the stop client has none"):
                await request_stop(config, timeout=5)
            with pytest.raises(RingError, match="failed to prove it knows the ring's secret"):
                await request_stop(config, secret=b"guess", timeout=5)
            result = await trio.run_process(
                [*ring_cmd, "stop", "--config", str(ring_file), "--secret-file", str(wrong)],
                capture_stdout=True, capture_stderr=True, check=False,
            )
            assert result.returncode == 1 and b"failed to prove it knows the ring's secret" in result.stderr
            # A client that skips the proof and sends STOP straight away.
            stream = await trio.open_tcp_stream("127.0.0.1", ports[0])
            async with stream:
                hello = _hello(config, 0, Role.CONTROL, secured=True)
                await stream.send_all(encode_frame(hello) + encode_frame(Stop()))
                frames = await _frames_until_closed(stream, FrameDecoder())
            assert [type(f) for f in frames] == [Hello, Auth, Reject]
            assert not node0.core.stopping
            result = await trio.run_process(
                [*ring_cmd, "stop", "--config", str(ring_file), "--secret-file", str(right)],
                capture_stdout=True, capture_stderr=True, check=False,
            )
            assert result.returncode == 0, result.stderr
            assert node0.core.stopping
        nursery.cancel_scope.cancel()


async def test_without_a_secret_a_message_from_outside_the_ring_is_refused_without_a_crash():
    # A ring without a secret (loopback) authenticates nobody, as before:
    # an outsider can still connect as node 0's previous node. Its message
    # from the non-existent origin 999 (issue 9: delivered, then circulating
    # forever) is a protocol error for that connection only: nothing is
    # delivered, node 0 goes on, and the ring completes once node 1 comes.
    config = RingConfig.local(2, ports=free_ports(2))
    out = io.StringIO()
    nodes = [RingNode(config, i, messages=[(0, "real"), (1, "real")], deliveries=out if i == 0 else None, options=FAST)
             for i in (0, 1)]
    async with trio.open_nursery() as nursery:
        await nursery.start(nodes[0].run)
        for forged in (
            Message(Direction.CW, 999, 0, 1, "from nowhere"),
            Message(Direction.CW, 1, 999, 1, "to nowhere"),
        ):
            frames = await _pose_as_predecessor(config, 0, 1, secured=False, secret=b"", then=[forged])
            assert [type(f) for f in frames] == [Hello, Auth]  # then closed: no ACK
        assert out.getvalue() == "" and nodes[0].prev_link.state.recv_next == 1
        assert "not in the ring" in nodes[0].prev_link.last_error
        with trio.fail_after(30):
            nursery.start_soon(nodes[1].run)
            await nodes[0].finished.wait()
    assert [r["origin"] for r in _deliveries(out)] == [0, 1]
    assert nodes[0].summary.ring.delivered == 4


# --- the command line ---------------------------------------------------------------


def _join(tmp_path, host: str, *extra: str):
    config = write_ring(tmp_path / "ring.toml", [(0, host, free_ports(1)[0])])
    return CliRunner().invoke(ring, ["join", "--config", str(config), "--id", "0", "--connect-timeout", "1", *extra])


@pytest.mark.parametrize("host, extra", [("10.255.255.1", []), ("127.0.0.1", ["--listen", "0.0.0.0:7500"])])
def test_a_node_listening_beyond_loopback_refuses_to_start_without_a_secret(tmp_path, host, extra):
    result = _join(tmp_path, host, *extra)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not a loopback address" in lines[0] and "--secret-file" in lines[0], result.output


@pytest.mark.parametrize("flag", ["--insecure", "--secret-file"])
def test_insecure_or_a_secret_lets_it_past_that_check(tmp_path, flag):
    # It then fails to bind 10.255.255.1, which no host of the test has: that
    # error proves the node went past the refusal.
    secret = tmp_path / "s"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    extra = [flag] if flag == "--insecure" else [flag, str(secret)]
    result = _join(tmp_path, "10.255.255.1", *extra)
    assert result.exit_code == 1 and "cannot listen on 10.255.255.1" in result.output, result.output


def test_an_empty_secret_file_is_refused_and_a_readable_one_warned_about(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    result = _join(tmp_path, "127.0.0.1", "--secret-file", str(empty))
    assert result.exit_code == 1 and f"Error: {empty}: the secret file is empty" in result.output
    result = CliRunner().invoke(ring, ["stop", "--config", str(tmp_path / "ring.toml"), "--secret-file", str(empty)])
    assert result.exit_code == 1 and "the secret file is empty" in result.output
    readable = tmp_path / "readable"
    readable.write_text("s3cret")
    readable.chmod(0o644)
    result = CliRunner().invoke(
        ring, ["stop", "--config", str(tmp_path / "ring.toml"), "--secret-file", str(readable), "--timeout", "1"]
    )
    assert "warning: " in result.output and "can be read by other users (mode 0644); chmod 600 it" in result.output
    assert result.exit_code == 1 and "cannot reach node 0" in result.output  # it went on


async def test_a_connection_that_stalls_in_the_handshake_is_dropped_after_handshake_timeout(tmp_path, ring_cmd):
    # A silent client, and one that greets and then never proves, each hold
    # a connection for --handshake-timeout at most (10 s by default, which
    # would fail this test's 4 s bound).
    ports = free_ports(2)
    config = RingConfig.local(2, ports=ports)
    ring_file = write_ring(tmp_path / "ring.toml", [(n.id, n.host, n.port) for n in config.nodes])
    argv = [*ring_cmd, "join", "--config", str(ring_file), "--id", "0", "--handshake-timeout", "0.5"]
    async with trio.open_nursery() as nursery:
        proc = await RingProcess.start(nursery, argv)
        try:
            with trio.fail_after(20):
                await proc.wait_for_stderr("listening on")
            for greet in (False, True):
                with trio.fail_after(4):
                    stream = await trio.open_tcp_stream("127.0.0.1", ports[0])
                    async with stream:
                        if greet:
                            await stream.send_all(encode_frame(_hello(config, 1, Role.PREDECESSOR, secured=False)))
                        frames = await _frames_until_closed(stream, FrameDecoder())
                assert [type(f) for f in frames] == ([Hello, Auth] if greet else [])
        finally:
            proc.kill()
            with trio.fail_after(10):
                await proc.wait()
