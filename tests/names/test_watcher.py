"""The hosts-file watcher and the DNS port's ready-made hosts answers, without trio."""

import logging
import os

from trionet.names.hosts import parse_hosts
from trionet.names.hostswire import HostsWireCache
from trionet.names.watcher import HostsWatcher, read_hosts, stamp

log = logging.getLogger("test-watcher")


def test_a_changed_file_is_reloaded_and_an_unreadable_one_keeps_the_table(tmp_path, caplog):
    path = tmp_path / "hosts"
    path.write_text("10.0.0.1 one.lan\n")
    watcher = HostsWatcher(str(path), None, log)
    assert watcher.needs_reload(stamp(str(path)), forced=False)  # never read
    assert watcher.apply(read_hosts(str(path)))
    assert watcher.reloads == 1 and watcher.table.lookup("one.lan", "A").records == ("10.0.0.1",)
    assert not watcher.needs_reload(stamp(str(path)), forced=False)
    assert watcher.needs_reload(stamp(str(path)), forced=True)  # SIGHUP
    path.write_text("10.0.0.2 two.lan\nnot-an-ip bad.lan\n")
    assert watcher.needs_reload(stamp(str(path)), forced=False)
    with caplog.at_level(logging.INFO, "test-watcher"):
        assert watcher.apply(read_hosts(str(path)))
    assert "hosts:2: 'not-an-ip' is not an IP address; line skipped" in caplog.text
    assert watcher.table.lookup("one.lan", "A") is None and watcher.reloads == 2
    os.unlink(path)
    read = read_hosts(str(path))
    assert read.stamp is None and read.error is not None
    assert watcher.needs_reload(stamp(str(path)), forced=False)
    assert not watcher.apply(read)
    assert watcher.stamp is None and watcher.reloads == 2
    assert watcher.table.lookup("two.lan", "A").records == ("10.0.0.2",)  # kept


def test_a_given_table_is_served_until_the_file_is_read():
    table = parse_hosts("10.0.0.9 given.lan\n")[0]
    watcher = HostsWatcher(None, table, log)
    assert watcher.table is table and watcher.reloads == 0


def test_ready_made_answers_are_keyed_without_the_id_and_bounded():
    cache = HostsWireCache(entries=2)
    cache.remember(b"\x00\x01question-a", b"\x00\x01answer-a")
    assert cache.get(b"question-a") == b"answer-a"
    assert cache.get(b"\x00\x01question-a") is None
    cache.remember(b"\x00\x02question-b", b"\x00\x02answer-b")
    cache.remember(b"\x00\x03question-c", b"\x00\x03answer-c")  # full: emptied, then kept
    assert len(cache) == 1 and cache.get(b"question-c") == b"answer-c"
    cache.clear()
    assert len(cache) == 0 and cache.get(b"question-c") is None
