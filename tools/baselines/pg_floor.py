"""The PostgreSQL floor: the least a Python server can do per pgbench transaction.

A yardstick for ``tools/bench_pg.py --floor``, not a server: it speaks just
enough of the PostgreSQL protocol (version 3) for ``psql -c`` and pgbench's
point select, in ``-M simple``, ``extended`` and ``prepared``, and nothing
else: no authentication, no limits, no timeouts, no errors, no catalogue, no
types but the one integer column. Each worker process is one thread in one
``epoll`` loop (the course's loop, level-triggered), reading whole batches
of messages, answering each with SQLite called inline on a cached statement,
and writing the answers of a batch with one ``send``. Workers share the port
with ``SO_REUSEPORT``, as trionet's do.

What trionet costs above this, at the same clients, is the price of its
safety, its protocol coverage and trio; what this costs above PostgreSQL is
the price of a Python server on this machine.

With ``--canned`` it does not call SQLite at all and answers every query
with the row ``0``: the floor of the floor, a Python loop and its system
calls. With ``--apsw`` it calls SQLite through apsw (``pip install apsw``)
instead of Python's ``sqlite3`` module: whether a thinner wrapper lowers
the floor.

Usage: python3 tools/baselines/pg_floor.py --db PATH --port PORT [--workers N] [--canned | --apsw]
"""

import argparse
import os
import re
import select
import signal
import socket
import sqlite3
import struct

SSL_REQUEST = 80877103
PROTOCOL_3 = 196608
_ROW_DESCRIPTION = b"T" + struct.pack("!IH", 4 + 2 + 9 + 18, 1) + b"abalance\0" + struct.pack("!IhIhih", 0, 0, 20, 8, -1, 0)
_READY = b"Z\0\0\0\x05I"
_PARSE_COMPLETE = b"1\0\0\0\x04"
_BIND_COMPLETE = b"2\0\0\0\x04"
_PARAMETERS = b"t\0\0\0\x0a\0\x01\0\0\0\x00"  # one parameter, type 0: what the client sent (unknown)
_NO_DATA = b"n\0\0\0\x04"
_POINT = re.compile(rb"where\s+aid\s*=\s*(\d+)", re.IGNORECASE)


def _status(name: str, value: str) -> bytes:
    body = name.encode() + b"\0" + value.encode() + b"\0"
    return b"S" + struct.pack("!I", 4 + len(body)) + body


_HELLO = (
    b"R\0\0\0\x08\0\0\0\0"
    + b"".join(
        _status(n, v)
        for n, v in [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("TimeZone", "UTC"),
        ]
    )
    + b"K\0\0\0\x0c"
    + struct.pack("!II", os.getpid() & 0x7FFFFFFF, 1)
    + _READY
)


def _data_row(value) -> bytes:
    if value is None:
        return b"D\0\0\0\x0a\0\x01\xff\xff\xff\xff"
    text = str(value).encode()
    return b"D" + struct.pack("!IHI", 10 + len(text), 1, len(text)) + text


def _complete(tag: bytes) -> bytes:
    return b"C" + struct.pack("!I", 5 + len(tag)) + tag + b"\0"


class Connection:
    """One client: its buffer, its prepared statements, and the database."""

    def __init__(self, db) -> None:
        self.db = db
        self.cursor = None if db is None else db.cursor()
        self.buffer = b""
        self.started = False
        self.statements: dict[bytes, bytes] = {}  # name -> SQL (SQLite's ``?1`` for ``$1``)
        self.portal: tuple[bytes, list] = (b"", [])

    def lookup(self, sql: bytes, params) -> bytes:
        if self.db is None:
            value = 0
        else:
            row = self.cursor.execute(sql.decode(), params).fetchone()
            value = None if row is None else row[0]
        return _data_row(value) + _complete(b"SELECT 1")

    def feed(self, data: bytes) -> bytes | None:
        """Answer every whole message in the buffer; None: the client said Terminate."""
        buf = self.buffer + data
        out = []
        pos = 0
        while True:
            if not self.started:
                if len(buf) - pos < 8:
                    break
                (length,) = struct.unpack_from("!I", buf, pos)
                if len(buf) - pos < length:
                    break
                (code,) = struct.unpack_from("!I", buf, pos + 4)
                pos += length
                if code == SSL_REQUEST:
                    out.append(b"N")
                elif code == PROTOCOL_3:
                    out.append(_HELLO)
                    self.started = True
                else:
                    return None
                continue
            if len(buf) - pos < 5:
                break
            kind = buf[pos : pos + 1]
            (length,) = struct.unpack_from("!I", buf, pos + 1)
            if len(buf) - pos < 1 + length:
                break
            body = buf[pos + 5 : pos + 1 + length]
            pos += 1 + length
            if kind == b"B":
                name_end = body.index(b"\0")  # the portal's name (ignored: one portal)
                stmt_end = body.index(b"\0", name_end + 1)
                stmt = body[name_end + 1 : stmt_end]
                at = stmt_end + 1
                (nformats,) = struct.unpack_from("!H", body, at)
                at += 2 + 2 * nformats
                (nparams,) = struct.unpack_from("!H", body, at)
                at += 2
                params = []
                for _ in range(nparams):
                    (size,) = struct.unpack_from("!i", body, at)
                    at += 4
                    params.append(int(body[at : at + size]))
                    at += size
                self.portal = (self.statements[stmt], params)
                out.append(_BIND_COMPLETE)
            elif kind == b"E":
                out.append(self.lookup(*self.portal))
            elif kind == b"S":
                out.append(_READY)
            elif kind == b"D":
                if body[:1] == b"S":
                    out.append(_PARAMETERS)
                out.append(_ROW_DESCRIPTION)
            elif kind == b"P":
                name_end = body.index(b"\0")
                sql_end = body.index(b"\0", name_end + 1)
                self.statements[body[:name_end]] = body[name_end + 1 : sql_end].replace(b"$", b"?")
                out.append(_PARSE_COMPLETE)
            elif kind == b"Q":
                sql = body[:-1]
                if point := _POINT.search(sql):
                    out.append(_ROW_DESCRIPTION)
                    out.append(self.lookup(b"SELECT abalance FROM pgbench_accounts WHERE aid = ?1", [int(point[1])]))
                else:  # psql's readiness probe, SELECT 1, and anything else: one row, 1
                    out.append(_ROW_DESCRIPTION + _data_row(1) + _complete(b"SELECT 1"))
                out.append(_READY)
            elif kind == b"X":
                return None
            # H (Flush), C (Close) and the rest: nothing to send in this floor
        self.buffer = buf[pos:]
        return b"".join(out)


def _connect(path: str, use_apsw: bool = False):
    """A read-only connection set up as trionet's read-only sessions are: pages read from a map of the file."""
    if use_apsw:
        import apsw

        db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    else:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA cache_size=-512")
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute(f"PRAGMA mmap_size={1 << 30}")
    return db


def serve(listener: socket.socket, db_path: str, canned: bool, use_apsw: bool = False) -> None:
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    clients: dict[int, tuple[socket.socket, Connection]] = {}
    while True:
        for fd, _ in epoll.poll():
            if fd == listener.fileno():
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue  # another worker took it
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                db = None if canned else _connect(db_path, use_apsw)
                clients[sock.fileno()] = (sock, Connection(db))
                epoll.register(sock.fileno(), select.EPOLLIN)
                continue
            sock, conn = clients[fd]
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            answer = conn.feed(data) if data else None
            if answer is None:
                epoll.unregister(fd)
                del clients[fd]
                sock.close()
            elif answer:
                sent = sock.send(answer)
                if sent < len(answer):  # a full socket: rare with answers this small, so simply wait
                    sock.setblocking(True)
                    sock.sendall(answer[sent:])
                    sock.setblocking(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--canned", action="store_true", help="answer 0 without calling SQLite")
    parser.add_argument("--apsw", action="store_true", help="call SQLite through apsw instead of sqlite3")
    args = parser.parse_args()
    children = []
    for worker in range(args.workers):
        pid = os.fork() if worker < args.workers - 1 else 0
        if pid:
            children.append(pid)
            continue
        if worker < args.workers - 1:
            children = []  # a forked worker: its siblings are not its own to stop
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", args.port))
        listener.listen(512)
        listener.setblocking(False)
        try:
            serve(listener, args.db, args.canned, args.apsw)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                os.kill(child, signal.SIGTERM)
        return


if __name__ == "__main__":
    main()
