"""``trionet ring status``: the STATUS frames, the answer from the core, and real nodes on free ports."""

from __future__ import annotations

import dataclasses

import json
import secrets

import pytest
import trio
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from trionet.ring.cli import ring
from trionet.ring.config import RingConfig
from trionet.ring.core import NodeCore
from trionet.ring.demo import free_ports
from trionet.ring.frames import (
    NONCE_BYTES,
    Direction,
    FrameDecoder,
    Message,
    RemoteProtocolError,
    Role,
    StatusReply,
    StatusRequest,
    Token,
    decode_frame,
    encode_frame,
)
from trionet.ring.handshake import Opening
from trionet.ring.node import NodeOptions, RingNode, request_status
from trionet.ring.status import FIELDS, render_json, render_table, status_entries

from .conftest import write_ring

SECRET = b"status secret"
U64 = st.integers(0, 2**64 - 1)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans(), st.booleans(), U64, U64, U64, U64)
def test_status_reply_round_trips(node, epoch, cw, ccw, sent, delivered, waiting, undelivered):
    reply = StatusReply(node, epoch, cw, ccw, sent, delivered, waiting, undelivered)
    assert decode_frame(encode_frame(reply)[4:]).frame == reply


def test_status_request_round_trips_and_refuses_a_body():
    wire = encode_frame(StatusRequest())
    assert decode_frame(wire[4:]).frame == StatusRequest()
    with pytest.raises(RemoteProtocolError, match="frame with a body"):
        decode_frame(wire[4:] + b"x")


def test_a_status_reply_with_a_bad_tokens_byte_is_refused():
    payload = bytearray(encode_frame(StatusReply(1, 1, True, True, 0, 0, 0))[4:])
    payload[14 + 8] = 4  # the tokens byte, after the header, node and epoch
    with pytest.raises(RemoteProtocolError, match="tokens byte 4"):
        decode_frame(bytes(payload))


def test_the_core_reports_tokens_counters_and_what_is_left():
    core = NodeCore(1, (0, 1, 2), [(2, "a"), (0, "b"), (0, "c")])
    assert core.status(1) == StatusReply(1, 1, False, False, 0, 0, 3, 0)
    core.receive(Token(Direction.CCW), 0.0)  # sends "a", holds the ccw token
    core.receive(Message(Direction.CW, 0, 1, 4, "for me"), 0.0)
    assert core.status(7) == StatusReply(1, 7, False, True, 1, 1, 2, 0)


def test_node_0_reports_a_parked_token_as_held():
    core = NodeCore(0, (0, 1))
    core.start()  # node 0 proposes the first view: it keeps the rounds
    core.receive(Token(Direction.CW, 3, busy=False), 0.0)  # came back clean: parked
    assert core.status(1).holds_cw and not core.status(1).holds_ccw


def _frames(data: bytes):
    decoder = FrameDecoder()
    decoder.receive_data(data)
    out = []
    while (event := decoder.next_event()).__class__.__name__ == "Received":
        out.append(event)
    return out


@pytest.mark.parametrize("secret", [SECRET, None], ids=["secret", "no secret"])
@pytest.mark.parametrize("client_secret", ["same", "other"])
def test_a_status_client_is_answered_only_after_its_proof(secret, client_secret):
    ring = RingConfig.local(3, ports=[1, 2, 3])
    common = dict(ring=ring.fingerprint, digest=ring.digest, epoch=1)
    reply = StatusReply(2, 1, True, False, 5, 6, 7)
    acceptor = Opening.acceptor(
        node_id=2, previous=1, recv_next=lambda: 1, accepts_stop=False, status=lambda: reply,
        secret=secret, nonce=secrets.token_bytes(NONCE_BYTES), **common,
    )
    theirs = secret if client_secret == "same" or secret is None else b"a guess"
    client = Opening.dialer(
        node_id=2, role=Role.CONTROL, peer_id=2, recv_next=1, me="this client",
        secret=theirs, nonce=secrets.token_bytes(NONCE_BYTES), **common,
    )
    to_acceptor = client.start()
    to_client = b"".join(acceptor.receive(e) for e in _frames(to_acceptor))
    to_acceptor = b"".join(client.receive(e) for e in _frames(to_client) if not client.finished)
    if client.refused:
        assert "failed to prove" in client.refused  # the node's proof fails the client's check first
        return
    to_acceptor += encode_frame(StatusRequest())
    answer = b"".join(acceptor.receive(e) for e in _frames(to_acceptor) if not acceptor.finished)
    (event,) = _frames(answer)
    assert event.frame == reply and acceptor.status_requested and not acceptor.stop_requested


def test_a_node_without_a_status_answer_refuses_the_request():
    ring = RingConfig.local(1, ports=[1])
    common = dict(ring=ring.fingerprint, digest=ring.digest, epoch=1, secret=None)
    acceptor = Opening.acceptor(node_id=0, previous=0, recv_next=lambda: 1, accepts_stop=True,
                                nonce=bytes(NONCE_BYTES), **common)
    client = Opening.dialer(node_id=0, role=Role.CONTROL, peer_id=0, recv_next=1, me="this client",
                            nonce=bytes(NONCE_BYTES), **common)
    to_client = b"".join(acceptor.receive(e) for e in _frames(client.start()))
    to_acceptor = b"".join(client.receive(e) for e in _frames(to_client)) + encode_frame(StatusRequest())
    answer = b"".join(acceptor.receive(e) for e in _frames(to_acceptor) if not acceptor.finished)
    assert "does not answer status requests" in _frames(answer)[0].frame.reason


def test_entries_and_their_renderings():
    answers = {0: StatusReply(0, 1, True, False, 3, 4, 5), 2: "cannot reach node 2 at 127.0.0.1:9: refused"}
    entries = status_entries(answers)
    assert entries[0] == dict(id=0, alive=True, epoch=1, cw_token=0, ccw_token="-", sent=3, delivered=4,
                              waiting=5, undelivered=0)
    assert entries[1]["alive"] is False and entries[1]["error"].startswith("cannot reach")
    assert all(set(FIELDS) <= set(e) for e in entries)
    assert json.loads(render_json(entries)) == entries
    table = render_table(entries).splitlines()
    assert table[0].split() == list(FIELDS)
    assert table[1].split() == ["0", "yes", "1", "0", "-", "3", "4", "5", "0"]
    assert table[2].split()[:2] == ["2", "no"]
    assert table[3] == "node 2: cannot reach node 2 at 127.0.0.1:9: refused"


FAST = NodeOptions(connect_timeout=60, backoff_initial=0.01, backoff_max=0.2)


@pytest.mark.parametrize("secret", [SECRET, None], ids=["secret", "no secret"])
async def test_status_of_a_ring_with_a_node_missing(secret, tmp_path):
    # Nodes 0 and 1 run (waiting for node 2, which never starts): the ring
    # cannot close, so what they report is fixed while we look.
    config = RingConfig.local(3, ports=free_ports(3))
    nodes = [
        RingNode(config, 0, options=FAST, secret=secret),
        RingNode(config, 1, messages=[(0, "x"), (2, "y")], options=FAST, secret=secret, to_send=2),
    ]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        with trio.fail_after(20):
            answers = await request_status(config, secret=secret, timeout=5)
        # (Epoch 1 once node 0's first probe passed; 0 before: the ring never closed.)
        assert dataclasses.replace(answers[0], epoch=1) == StatusReply(0, 1, False, False, 0, 0, 0)
        assert dataclasses.replace(answers[1], epoch=1) == StatusReply(1, 1, False, False, 0, 0, 2)
        assert answers[0].epoch <= 1 and answers[1].epoch <= 1
        assert "cannot reach node 2" in answers[2]
        if secret is not None:
            with trio.fail_after(20):
                wrong = await request_status(config, secret=b"not it", timeout=5)
            assert "failed to prove" in wrong[0] and "failed to prove" in wrong[1]
            with trio.fail_after(20):
                none = await request_status(config, secret=None, timeout=5)
            assert "requires the ring's shared secret" in none[0]
        # The CLI, the way a user runs it (in a thread: it runs its own trio loop).
        path = write_ring(tmp_path / "ring.toml", [(n.id, n.host, n.port) for n in config.nodes])
        args = ["status", "--config", str(path), "--format", "json", "--timeout", "5"]
        if secret is not None:
            (tmp_path / "secret").write_bytes(secret)
            (tmp_path / "secret").chmod(0o600)
            args += ["--secret-file", str(tmp_path / "secret")]
        result = await trio.to_thread.run_sync(lambda: CliRunner().invoke(ring, args))
        nursery.cancel_scope.cancel()
    assert result.exit_code == 1, result.output  # node 2 did not answer
    entries = json.loads(result.stdout)
    assert [(e["id"], e["alive"]) for e in entries] == [(0, True), (1, True), (2, False)]
    assert entries[1]["waiting"] == 2 and entries[1]["cw_token"] == "-"


@pytest.mark.slow
async def test_status_command_against_real_processes(tmp_path, ring_cmd):
    from .conftest import RingProcess

    ports = free_ports(3)
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in range(3)])
    secret = tmp_path / "ring.secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    messages = tmp_path / "m1.txt"
    messages.write_text("0 one\n# a comment\n2 two\n0 three\n")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            procs = [
                await RingProcess.start(nursery, [*ring_cmd, "join", "--config", str(config), "--id", str(i),
                                                  "--secret-file", str(secret), *extra])
                for i, extra in ((0, []), (1, ["--messages", str(messages)]))
            ]
            # Node 0 listens before it dials; once it reached node 1, both listen. Node 2 never starts.
            await procs[0].wait_for_stderr("connected to node 1")
            base = [*ring_cmd, "status", "--config", str(config), "--timeout", "5"]
            table = await trio.run_process([*base, "--secret-file", str(secret)], capture_stdout=True,
                                           capture_stderr=True, check=False)
            as_json = await trio.run_process([*base, "--secret-file", str(secret), "--format", "json"],
                                             capture_stdout=True, capture_stderr=True, check=False)
            unproven = await trio.run_process([*base, "--format", "json"], capture_stdout=True,
                                              capture_stderr=True, check=False)
        for proc in procs:
            proc.kill()
            await proc.wait()
    assert table.returncode == 1, table.stderr
    rows = [line.split() for line in table.stdout.decode().splitlines()]
    assert rows[0] == list(FIELDS)
    assert rows[1] == ["0", "yes", "1", "-", "-", "0", "0", "0", "0"]
    assert rows[2] == ["1", "yes", "1", "-", "-", "0", "0", "3", "0"]  # three messages waiting
    assert rows[3][:3] == ["2", "no", "-"]
    assert rows[4][:2] == ["node", "2:"] and "cannot reach node 2" in table.stdout.decode()
    entries = json.loads(as_json.stdout)
    assert [(e["id"], e["alive"], e["waiting"]) for e in entries] == [(0, True, 0), (1, True, 3), (2, False, "-")]
    # Without the secret file no node answers: each shows alive false, saying why.
    refused = json.loads(unproven.stdout)
    assert [e["alive"] for e in refused] == [False, False, False]
    assert "requires the ring's shared secret" in refused[0]["error"]
