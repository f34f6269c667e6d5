"""Ring configuration (a TOML list of nodes) and message files, validated before anything starts.

The ring file lists the nodes in ring order; clockwise goes from each node to
the one after it, wrapping around::

    [[node]]
    id = 0
    host = "10.0.0.1"
    port = 7500

A message file holds one message per line, ``DEST_ID TEXT...``; blank lines
and lines starting with ``#`` are skipped. Message files are streamed: they
are read once to validate them (nothing is kept but a count) and once more,
line by line, while the node sends.

Error handling: every problem is a :class:`ConfigError` whose message starts
with ``file:`` or ``file:line:``, so the command can print it as is and exit
before joining the ring.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tomllib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trionet.addresses import format_address, is_loopback

__all__ = [
    "MAX_SECRET_BYTES",
    "MAX_TEXT_BYTES",
    "ConfigError",
    "NodeAddress",
    "RingConfig",
    "count_messages",
    "is_loopback",
    "iter_messages",
    "iter_numbered_messages",
    "load_config",
    "load_secret",
    "parse_config",
]

MAX_TEXT_BYTES = 60_000
"""The longest message text, in UTF-8 bytes; it keeps every frame far below the socket buffers."""


MAX_SECRET_BYTES = 4096
"""The longest secret file read; a secret is a few dozen bytes, and a wrong path (a log, a device) must not be slurped."""


class ConfigError(ValueError):
    """The ring file or a message file is invalid; the message says ``file:line: reason``."""


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """One node of the ring: its id and where it listens."""

    id: int
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port`` for an IPv6 address)."""
        return format_address(self.host, self.port)


@dataclass(frozen=True, slots=True)
class RingConfig:
    """The nodes in ring order (clockwise) and the file they came from."""

    nodes: tuple[NodeAddress, ...]
    source: str = "<ring>"

    @property
    def ids(self) -> tuple[int, ...]:
        """The node ids in ring order."""
        return tuple(n.id for n in self.nodes)

    @property
    def fingerprint(self) -> int:
        """A CRC-32 of the ring order and addresses; neighbours compare it in the handshake."""
        return zlib.crc32(self._canonical().encode())

    @property
    def digest(self) -> bytes:
        """SHA-256 of the ring order and addresses; every handshake proof covers it."""
        return hashlib.sha256(self._canonical().encode()).digest()

    def _canonical(self) -> str:
        return ";".join(f"{n.id}@{n.host}:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> NodeAddress:
        """Return the node with id ``node_id``.

        Raises:
            ConfigError: no such node in the ring.
        """
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise ConfigError(f"{self.source}: node {node_id} is not in the ring (ids: {_id_list(self.ids)})")

    def neighbours(self, node_id: int) -> tuple[NodeAddress, NodeAddress]:
        """Return ``(previous, next)`` of ``node_id`` in clockwise order."""
        index = self.ids.index(self.node(node_id).id)
        size = len(self.nodes)
        return self.nodes[(index - 1) % size], self.nodes[(index + 1) % size]

    def to_toml(self) -> str:
        """The ring file for these nodes (:func:`parse_config` reads it back to the same ring)."""
        return "".join(f'[[node]]\nid = {n.id}\nhost = {json.dumps(n.host)}\nport = {n.port}\n\n' for n in self.nodes)

    @classmethod
    def local(cls, size: int, *, host: str = "127.0.0.1", ports: Iterable[int] | None = None) -> RingConfig:
        """A ring of ``size`` nodes with ids 0..size-1 on ``host`` (the demo and the tests use it)."""
        ports = list(ports) if ports is not None else [7500 + i for i in range(size)]
        return cls(tuple(NodeAddress(i, host, ports[i]) for i in range(size)), "<local>")


def _id_list(ids: Iterable[int]) -> str:
    ids = list(ids)
    shown = ", ".join(map(str, ids[:12]))
    return shown + (", ..." if len(ids) > 12 else "")


def load_config(path: str | Path) -> RingConfig:
    """Read and validate a ring file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or describes an
            invalid ring (no node, no node 0, a duplicate id or address, a
            field of the wrong type).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the ring file: {exc.strerror or exc}") from None
    return parse_config(data, str(path))


def parse_config(data: bytes | str, source: str = "<ring>") -> RingConfig:
    """Parse and validate the text of a ring file; see :func:`load_config`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 (byte {exc.start})") from None
    try:
        doc = tomllib.loads(data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"node"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; only [[node]] tables are allowed")
    entries = doc.get("node")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: no [[node]] table; list the nodes in ring order")
    lines = _node_lines(data)
    nodes: list[NodeAddress] = []
    seen_ids: dict[int, str] = {}
    seen_addresses: dict[tuple[str, int], str] = {}
    for index, entry in enumerate(entries):
        where = f"{source}:{lines[index]}" if index < len(lines) else f"{source}: node #{index + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: each node must be a [[node]] table")
        extra = sorted(set(entry) - {"id", "host", "port"})
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} (a node has id, host and port)")
        node_id, host, port = entry.get("id"), entry.get("host"), entry.get("port")
        if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id < 2**32:
            raise ConfigError(f"{where}: 'id' must be an integer from 0 to 4294967295, got {node_id!r}")
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(f"{where}: node {node_id}: 'host' must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{where}: node {node_id}: 'port' must be an integer from 1 to 65535, got {port!r}")
        if node_id in seen_ids:
            raise ConfigError(f"{where}: duplicate id {node_id} (first at {seen_ids[node_id]})")
        if (host, port) in seen_addresses:
            raise ConfigError(
                f"{where}: node {node_id}: duplicate address {host}:{port} (first at {seen_addresses[host, port]})"
            )
        seen_ids[node_id] = where
        seen_addresses[host, port] = where
        nodes.append(NodeAddress(node_id, host.strip(), port))
    if 0 not in seen_ids:
        raise ConfigError(f"{source}: there is no node 0 (ids: {_id_list(seen_ids)}); node 0 starts the tokens")
    return RingConfig(tuple(nodes), source)


def _node_lines(text: str) -> list[int]:
    # tomllib keeps no positions; the [[node]] headers give good enough line numbers.
    return [i for i, line in enumerate(text.splitlines(), 1) if line.strip().replace(" ", "").startswith("[[node]]")]


def iter_messages(path: str | Path, valid_ids: Iterable[int]) -> Iterator[tuple[int, str]]:
    """Yield ``(destination, text)`` for each message of a message file, reading it line by line.

    Args:
        path: the message file.
        valid_ids: the ids of the ring; any other destination is an error.

    Raises:
        ConfigError: ``file:line: reason`` for the first bad line, or
            ``file: reason`` when the file cannot be read.
    """
    for _, dest, text in iter_numbered_messages(path, valid_ids):
        yield dest, text


def iter_numbered_messages(path: str | Path, valid_ids: Iterable[int]) -> Iterator[tuple[int, int, str]]:
    """Yield ``(line number, destination, text)`` for each message of a message file.

    The line number is the message's stable id (``msg_id`` on the wire): the
    same file read again gives every message the same id, which is what lets
    a restarted node skip what it already sent (:mod:`trionet.ring.journal`).

    Raises:
        ConfigError: as :func:`iter_messages`.
    """
    ids = frozenset(valid_ids)
    try:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                message = _parse_message_line(raw, ids, f"{path}:{lineno}")
                if message is not None:
                    yield lineno, *message
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the message file: {exc.strerror or exc}") from None


def count_messages(path: str | Path, valid_ids: Iterable[int]) -> int:
    """Validate a whole message file without keeping it, and return how many messages it has.

    Raises:
        ConfigError: as :func:`iter_messages`.
    """
    return sum(1 for _ in iter_messages(path, valid_ids))


def _parse_message_line(raw: bytes, ids: frozenset[int], where: str) -> tuple[int, str] | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 (byte {exc.start})") from None
    line = line.rstrip("\r\n")
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    head, *rest = stripped.split(None, 1)
    text = rest[0].strip() if rest else ""
    if not head.isascii() or not head.isdigit():
        raise ConfigError(f"{where}: expected 'DEST_ID TEXT...', the destination {head[:20]!r} is not a node id")
    dest = int(head)
    if dest not in ids:
        raise ConfigError(f"{where}: destination {dest} is not in the ring (ids: {_id_list(sorted(ids))})")
    if not text:
        raise ConfigError(f"{where}: message to {dest} has no text")
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise ConfigError(f"{where}: text longer than {MAX_TEXT_BYTES} bytes")
    return dest, text


def load_secret(path: str | Path) -> tuple[bytes, str | None]:
    """Read the ring's shared secret; return it and a warning, or None, about the file's permissions.

    Leading and trailing whitespace (an editor's final newline) is not part
    of the secret, so ``openssl rand -hex 32 > FILE`` works as is.

    Raises:
        ConfigError: the file cannot be read, holds no secret, or is longer
            than :data:`MAX_SECRET_BYTES`.
    """
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            secret = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the secret file: {exc.strerror or exc}") from None
    if len(secret) > MAX_SECRET_BYTES:
        raise ConfigError(f"{path}: longer than {MAX_SECRET_BYTES} bytes; is it really the secret file?")
    secret = secret.strip()
    if not secret:
        raise ConfigError(f"{path}: the secret file is empty; put the ring's shared secret in it (e.g. openssl rand -hex 32)")
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = (
            f"{path}: the secret file can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 it"
        )
    return secret, warning
