"""The exactly-once journal: what a restarted node skips and records (no sockets), then real processes."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trionet.ring.config import iter_numbered_messages
from trionet.ring.core import Deliver, NodeCore, Returned, Send
from trionet.ring.frames import Direction, Message, Token
from trionet.ring.journal import Journal, JournalError
from trionet.ring.journal_file import JournalFile, delivery_lines, journal_path

from .conftest import RingProcess, read_deliveries, write_ring


def test_records_round_trip_through_the_text():
    journal = Journal()
    text = journal.on_return(3) + journal.on_delivery(2, 7) + journal.on_return(5)
    again = Journal.parse(text)
    assert again.returned == {3, 5}
    assert again.delivered == {(2, 7)}


def test_the_epoch_is_recorded_when_it_grows():
    # "E": only a higher epoch is written (one record per view change, not per frame).
    journal = Journal()
    text = journal.on_epoch(4) + (journal.on_epoch(3) or "") + (journal.on_epoch(4) or "") + journal.on_epoch(9)
    assert text == "E 4\nE 9\n"
    assert Journal.parse(text + "R 1\n").epoch == 9
    assert Journal.parse("R 1\n").epoch == 0


def test_a_second_delivery_is_refused_and_not_recorded():
    journal = Journal()
    assert journal.on_delivery(1, 4) == "D 1 4\n"
    assert journal.on_delivery(1, 4) is None
    assert journal.on_delivery(4, 1) == "D 4 1\n"  # (origin, id) is the key, not the pair unordered


def test_unsent_skips_only_returned_ids():
    journal = Journal.parse("R 2\nR 5\n")
    messages = [(1, 0, "a"), (2, 0, "b"), (4, 1, "c"), (5, 1, "d")]
    assert list(journal.unsent(messages)) == [(1, 0, "a"), (4, 1, "c")]


_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(0, 3), st.integers(1, 6)),
        st.tuples(st.just("return"), st.integers(1, 6)),
        st.tuples(st.just("restart"), st.integers(0, 4)),  # keep the text, cut its last n characters
    ),
    max_size=60,
)


@given(_EVENTS)
def test_across_restarts_and_torn_writes_nothing_is_delivered_twice(events):
    # The journal's text is what survives; a restart may tear the last
    # record (a crash mid-write: the act it announced did not happen).
    text, journal, acted = "", Journal(), []
    for event in events:
        if event[0] == "deliver":
            line = journal.on_delivery(event[1], event[2])
            if line is not None:
                text += line
                acted.append(("D", event[1], event[2]))
        elif event[0] == "return":
            text += journal.on_return(event[1])
            acted.append(("R", event[1]))
        else:
            cut = min(event[1], len(text))
            if cut and text.endswith("\n"):
                torn = text[: len(text) - cut]
                if not torn.endswith("\n"):
                    acted.pop()  # that act had not happened: its record was not complete
                    text = torn
            journal = Journal.parse(text)
            text = text[: text.rfind("\n") + 1]  # JournalFile cuts a torn record off
    delivered = [a for a in acted if a[0] == "D"]
    assert len(delivered) == len(set(delivered))
    assert Journal.parse(text).delivered == {a[1:] for a in delivered}
    assert Journal.parse(text).returned == {a[1] for a in acted if a[0] == "R"}


def test_an_incomplete_last_line_is_ignored():
    journal = Journal.parse("R 1\nD 3 4\nR 1")  # crash in the middle of "R 12\n"
    assert journal.returned == {1}
    assert journal.delivered == {(3, 4)}


@pytest.mark.parametrize("line", ["X 1", "R", "R one", "D 1", "D 1 2 3", "R 1 2", "E", "E x", "E 1 2"])
def test_a_complete_line_that_is_no_record_is_an_error(line):
    with pytest.raises(JournalError, match=r"<journal>:2: not a journal record"):
        Journal.parse(f"R 1\n{line}\n")


def test_blank_lines_are_allowed():
    assert Journal.parse("\nR 1\n\n").returned == {1}


def test_the_file_keeps_records_across_opens(tmp_path):
    path = journal_path(tmp_path / "deliveries.jsonl")
    assert path.name == "deliveries.jsonl.journal"
    first = JournalFile(path)
    first.append(first.journal.on_return(2))
    first.append(first.journal.on_delivery(0, 9))
    first.close()
    with open(path, "a") as fh:
        fh.write("R 7")  # a record cut short by a crash
    second = JournalFile(path)
    assert second.journal.returned == {2}
    second.append(second.journal.on_return(8))
    second.close()
    third = JournalFile(path)
    third.close()
    assert third.journal.returned == {2, 8}  # the cut record did not swallow the next one


def test_a_delivery_record_without_its_line_is_forgotten():
    """Killed inside the record's fsync (the record outlives a kill -9), the line never written."""
    journal = Journal.parse("D 1 3\nD 2 4\nR 5\n")
    assert journal.keep_delivered({(2, 4), (0, 9)}) == {(1, 3)}
    assert journal.delivered == {(2, 4)} and journal.returned == {5}
    assert journal.on_delivery(1, 3) == "D 1 3\n"  # delivered once when it comes again


def test_delivery_lines_reads_the_ids_of_complete_records(tmp_path):
    path = tmp_path / "deliveries.jsonl"
    assert delivery_lines(path) == set()
    path.write_text('{"id": "1-3", "origin": 1}\n{"id": "12-40", "origin": 12}\n{"id": "2-')  # the last one cut short
    assert delivery_lines(path) == {(1, 3), (12, 40)}


def test_numbered_messages_carry_their_line_numbers(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("# comment\n1 one\n\n0 two\n")
    assert list(iter_numbered_messages(path, [0, 1])) == [(2, 1, "one"), (4, 0, "two")]


def test_the_core_sends_numbered_messages_with_their_ids():
    core = NodeCore(1, (0, 1, 2), [(7, 2, "hello")])
    (send,) = core.receive(Token(Direction.CW), 0.0)
    assert isinstance(send, Send) and send.frame.msg_id == 7 and send.frame.uid == "1-7"
    back = Message(Direction.CW, 1, 2, 7, "hello", True)
    actions = core.receive(back, 1.0)
    assert isinstance(actions[0], Returned) and actions[0].message.msg_id == 7


def test_a_restarted_core_with_the_journal_sends_nothing_already_returned():
    journal = Journal()
    first = NodeCore(1, (0, 1), journal.unsent([(1, 0, "a"), (2, 0, "b")]))
    (send,) = first.receive(Token(Direction.CW), 0.0)
    for action in first.receive(Message(Direction.CW, 1, 0, 1, "a", True), 0.0):
        if isinstance(action, Returned):
            journal.on_return(action.message.msg_id)
    # Restarted with the same file: message 1 returned, message 2 never sent.
    again = NodeCore(1, (0, 1), journal.unsent([(1, 0, "a"), (2, 0, "b")]))
    (send,) = again.receive(Token(Direction.CW), 0.0)
    assert send.frame.msg_id == 2
    assert not again.has_pending()


def test_the_core_forwards_but_does_not_deliver_again_what_the_journal_has():
    # Not delivered again, but the message must still go back to its origin
    # marked delivered, or the origin would hold its token forever.
    journal = Journal.parse("D 0 3\n")
    core = NodeCore(2, (0, 1, 2), delivered_before=journal.was_delivered)
    (send,) = core.receive(Message(Direction.CW, 0, 2, 3, "x"), 0.0)
    assert isinstance(send, Send) and send.frame.delivered
    assert (core.delivered, core.already_delivered) == (0, 1)
    actions = core.receive(Message(Direction.CW, 0, 2, 4, "y"), 0.0)  # a new one is delivered
    assert [type(a) for a in actions] == [Deliver, Send] and core.delivered == 1


async def _run_ring(ring_cmd, config, ids, messages, deliveries) -> dict[int, RingProcess]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            procs = {}
            for i in ids:
                argv = [*ring_cmd, "join", "--config", str(config), "--id", str(i), "--connect-timeout", "30"]
                argv += ["--messages", str(messages[i]), "--deliveries", str(deliveries[i])]
                procs[i] = await RingProcess.start(nursery, argv)
            codes = {i: await p.wait() for i, p in procs.items()}
    for i, p in procs.items():
        assert codes[i] == 0, p.output
    return procs


@pytest.mark.slow
async def test_a_node_started_again_neither_resends_nor_redelivers(tmp_path, ring_cmd):
    from trionet.ring.demo import free_ports

    ids = [0, 1, 2]
    messages = {}
    for i in ids:
        messages[i] = tmp_path / f"messages-{i}.txt"
        messages[i].write_text("".join(f"{j} from {i} to {j} #{k}\n" for k in range(3) for j in ids))
    first = {i: tmp_path / f"first-{i}.jsonl" for i in ids}
    ports = free_ports(3)
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    await _run_ring(ring_cmd, config, ids, messages, first)
    before = first[1].read_bytes()
    assert sorted(r["id"] for r in read_deliveries(first[1])) == sorted(
        f"{i}-{n}" for i in ids for n in range(2, 10, 3)  # lines 2, 5, 8 of each file go to node 1
    )

    # A new ring run: node 1 again with the same files, one message added to
    # its file; nodes 0 and 2 fresh (new deliveries files, no journal), so
    # they send node 1 everything again.
    with messages[1].open("a") as fh:
        fh.write("0 added after the restart\n")
    second = {0: tmp_path / "second-0.jsonl", 1: first[1], 2: tmp_path / "second-2.jsonl"}
    ports = free_ports(3)
    config = write_ring(tmp_path / "ring2.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    procs = await _run_ring(ring_cmd, config, ids, messages, second)

    assert first[1].read_bytes() == before  # nothing delivered twice, not even a line more
    out = procs[1].stdout.decode()
    # Its counters carry on from the journal (9 returned and 9 delivered in the
    # first run), plus the one added message, which alone went out.
    assert "node 1: sent 10, delivered to it 9, " in out, procs[1].output
    err = procs[1].stderr.decode()
    assert "9 message(s) already sent and returned (skipped), 9 already delivered here" in err
    assert "joining a ring of 3 with 1 message(s) to send" in err
    assert [r["id"] for r in read_deliveries(second[0]) if r["origin"] == 1] == ["1-10"]
    assert len(read_deliveries(second[2])) == 6  # 3 from node 0, 3 from node 2; none from node 1
