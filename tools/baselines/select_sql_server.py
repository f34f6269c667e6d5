"""Baseline for tools/bench_sql.py: an SQLite server written as a select() event loop.

This is the loop as the course teaches it: wait for I/O events with
``select.select``, dispatch each one to its handler, repeat. Everything runs
in one thread; SQLite runs inline in the read handler, so while a query runs
no other client is served. It speaks enough of trionet's SQL protocol for the
benchmark's queries: the ``hello`` line on connect, then for each request
line a ``columns`` line, ``rows`` lines of up to 256 rows, and ``done``, or an
``error`` line.

It is a yardstick, not a server: no limits, no timeouts, no read-only
authorizer (the database is opened with ``mode=ro``).

Usage: ``python3 tools/baselines/select_sql_server.py --db PATH --port PORT``
"""

import argparse
import json
import select
import socket
import sqlite3
import time
from pathlib import Path

BATCH_ROWS = 256


def encode(obj):
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class Server:
    def __init__(self, db_path, host, port):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        uri = Path(db_path).resolve().as_uri() + "?mode=ro"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
        self.inbox = {}  # socket -> bytes received, not yet a whole line
        self.outbox = {}  # socket -> bytes waiting to be sent
        self.hello = encode({"type": "hello", "server": "select-baseline", "protocol": 1, "read_only": True})

    def run(self):
        while True:
            readers = [self.listener] + list(self.inbox)
            writers = [sock for sock, data in self.outbox.items() if data]
            readable, writable, _ = select.select(readers, writers, [])
            for sock in readable:
                if sock is self.listener:
                    self.handle_accept()
                elif sock in self.inbox:
                    self.handle_read(sock)
            for sock in writable:
                if sock in self.outbox:
                    self.handle_write(sock)

    # --- handlers ---------------------------------------------------------------

    def handle_accept(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inbox[sock] = b""
        self.outbox[sock] = self.hello

    def handle_read(self, sock):
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(sock)
            return
        buffer = self.inbox[sock] + data
        *lines, rest = buffer.split(b"\n")
        self.inbox[sock] = rest
        for line in lines:
            if line.strip():
                self.outbox[sock] += self.handle_request(line)

    def handle_write(self, sock):
        try:
            sent = sock.send(self.outbox[sock])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(sock)
            return
        self.outbox[sock] = self.outbox[sock][sent:]

    def close(self, sock):
        self.inbox.pop(sock, None)
        self.outbox.pop(sock, None)
        sock.close()

    # --- SQLite -------------------------------------------------------------------

    def handle_request(self, line):
        started = time.perf_counter()
        try:
            request = json.loads(line)
            req_id = request.get("id")
            sql = request["sql"]
            params = request.get("params") or ()
        except (ValueError, KeyError, AttributeError) as exc:
            return encode({"id": None, "type": "error", "code": "bad_request", "message": str(exc)})
        try:
            cursor = self.db.execute(sql, params)
            columns = [d[0] for d in cursor.description] if cursor.description else []
            reply = [encode({"id": req_id, "type": "columns", "columns": columns})]
            count = 0
            while True:
                rows = cursor.fetchmany(BATCH_ROWS)
                if not rows:
                    break
                reply.append(encode({"id": req_id, "type": "rows", "rows": rows}))
                count += len(rows)
        except sqlite3.Error as exc:
            return encode({"id": req_id, "type": "error", "code": "sql_error", "message": str(exc)})
        done = {
            "id": req_id,
            "type": "done",
            "rows": count,
            "truncated": False,
            "changes": 0,
            "last_insert_rowid": None,
            "ms": round((time.perf_counter() - started) * 1000, 3),
        }
        reply.append(encode(done))
        return b"".join(reply)


def main():
    parser = argparse.ArgumentParser(description="An SQLite server written as a select() event loop.")
    parser.add_argument("--db", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        Server(args.db, args.host, args.port).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
