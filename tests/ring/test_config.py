"""Ring files and message files: every error is reported as ``file:line: reason`` before anything starts."""

from __future__ import annotations

import pytest

from trionet.ring.config import (
    MAX_SECRET_BYTES,
    MAX_TEXT_BYTES,
    ConfigError,
    RingConfig,
    count_messages,
    is_loopback,
    iter_messages,
    load_config,
    load_secret,
    parse_config,
)

GOOD = """
[[node]]
id = 0
host = "10.0.0.1"
port = 7500

[[node]]
id = 7
host = "10.0.0.2"
port = 7500

[[node]]
id = 3
host = "10.0.0.3"
port = 7501
"""


def test_ring_order_and_neighbours():
    config = parse_config(GOOD, "ring.toml")
    assert config.ids == (0, 7, 3)
    assert [n.id for n in config.neighbours(0)] == [3, 7]
    assert [n.id for n in config.neighbours(3)] == [7, 0]
    assert config.node(7).address == "10.0.0.2:7500"


def test_a_ring_written_as_toml_reads_back_the_same():
    config = parse_config(GOOD, "ring.toml")
    again = parse_config(config.to_toml(), "again.toml")
    assert again.nodes == config.nodes and again.fingerprint == config.fingerprint
    odd = RingConfig.local(2, host='host "with" quotes', ports=[1, 2])
    assert parse_config(odd.to_toml()).nodes == odd.nodes


@pytest.mark.parametrize("size", [1, 2])
def test_small_rings_are_their_own_neighbours(size):
    config = RingConfig.local(size, ports=range(9000, 9000 + size))
    prev, nxt = config.neighbours(0)
    assert (prev.id, nxt.id) == ((size - 1), 1 % size)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no [[node]] table"),
        ("[[node]]\nid = 1\nhost = 'a'\nport = 1\n", "there is no node 0"),
        ("[[node]]\nid = 0\nhost = 'a'\nport = 1\n[[node]]\nid = 0\nhost = 'b'\nport = 1\n", "ring.toml:5: duplicate id 0"),
        ("[[node]]\nid = 0\nhost = 'a'\nport = 1\n[[node]]\nid = 1\nhost = 'a'\nport = 1\n", "ring.toml:5: node 1: duplicate address a:1"),
        ("[[node]]\nid = -1\nhost = 'a'\nport = 1\n", "ring.toml:1: 'id' must be an integer"),
        ("[[node]]\nid = true\nhost = 'a'\nport = 1\n", "'id' must be an integer"),
        ("[[node]]\nid = 0\nhost = ''\nport = 1\n", "'host' must be a non-empty string"),
        ("[[node]]\nid = 0\nhost = 'a'\nport = 70000\n", "'port' must be an integer from 1 to 65535"),
        ("[[node]]\nid = 0\nhost = 'a'\nport = 1\ncolour = 'red'\n", "unknown key(s) colour"),
        ("[[node]\n", "not valid TOML"),
        ("name = 'x'\n", "unknown key(s) name"),
    ],
)
def test_bad_ring_files(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ring.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("ring.toml:")


def test_own_id_missing_and_unreadable_file(tmp_path):
    config = parse_config(GOOD, "ring.toml")
    with pytest.raises(ConfigError, match=r"ring.toml: node 5 is not in the ring \(ids: 0, 7, 3\)"):
        config.node(5)
    with pytest.raises(ConfigError, match="cannot read the ring file"):
        load_config(tmp_path / "missing.toml")


def test_message_file_is_parsed_line_by_line(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("# comment\n\n3 hello   world \n0\tto node zero\r\n7 ünïcödé\n", encoding="utf-8")
    assert list(iter_messages(path, [0, 3, 7])) == [(3, "hello   world"), (0, "to node zero"), (7, "ünïcödé")]
    assert count_messages(path, [0, 3, 7]) == 3


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("9 nobody home", "destination 9 is not in the ring"),
        ("x hello", "the destination 'x' is not a node id"),
        ("-1 hello", "is not a node id"),
        ("3", "message to 3 has no text"),
        ("3 " + "a" * (MAX_TEXT_BYTES + 1), f"text longer than {MAX_TEXT_BYTES} bytes"),
    ],
)
def test_bad_message_lines_name_file_and_line(tmp_path, line, reason):
    path = tmp_path / "m.txt"
    path.write_text(f"0 fine\n# ok\n{line}\n0 never read\n")
    with pytest.raises(ConfigError) as info:
        count_messages(path, [0, 3])
    assert str(info.value).startswith(f"{path}:3: ")
    assert reason in str(info.value)


def test_message_file_not_utf8(tmp_path):
    path = tmp_path / "m.txt"
    path.write_bytes(b"0 ok\n0 \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"m.txt:2: not UTF-8"):
        count_messages(path, [0])


def test_message_file_is_streamed(tmp_path):
    # A generator: reading the first message must not read the whole file.
    path = tmp_path / "m.txt"
    path.write_text("0 first\n9 bad line far below\n")
    messages = iter_messages(path, [0])
    assert next(messages) == (0, "first")
    with pytest.raises(ConfigError, match=":2: destination 9"):
        next(messages)


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("LocalHost.", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False),
     ("127.0.0.1.example.com", False), ("", False)],
)
def test_which_listening_addresses_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_the_secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"  s3cret \n")
    path.chmod(0o600)
    assert load_secret(path) == (b"s3cret", None)  # surrounding whitespace is not part of it
    path.chmod(0o640)
    secret, warning = load_secret(path)
    assert secret == b"s3cret" and warning == f"{path}: the secret file can be read by other users (mode 0640); chmod 600 it"
    path.write_bytes(b"\n\t \n")
    with pytest.raises(ConfigError, match="the secret file is empty"):
        load_secret(path)
    path.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(ConfigError, match=f"longer than {MAX_SECRET_BYTES} bytes"):
        load_secret(path)
    path.write_bytes(b"x" * MAX_SECRET_BYTES)
    assert load_secret(path)[0] == b"x" * MAX_SECRET_BYTES
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        load_secret(tmp_path / "missing")
