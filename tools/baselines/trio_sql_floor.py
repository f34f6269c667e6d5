"""The floor: the least a trio SQL server can do per request, to compare trionet with.

It speaks just enough of the trionet SQL protocol for the benchmark (hello,
then columns/rows/done for each request line) and nothing else: no
authorizer, no limits, no timeouts, no streaming, no error handling, one
task per connection calling SQLite inline. Whatever trionet costs above this
is the price of its safety and features; whatever this costs above the
select() loop is the price of trio itself on this machine.

Usage: python3 tools/baselines/trio_sql_floor.py --db PATH --port PORT
"""

import argparse
import json
import sqlite3

import trio

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def handle(stream: trio.SocketStream) -> None:
        conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
        await stream.send_all(b'{"type":"hello","server":"trio-floor"}\n')
        buf = b""
        while data := await stream.receive_some(65536):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                cur = conn.execute(req["sql"], req.get("params") or ())
                rows = cur.fetchall()
                rid = req.get("id")
                out = "\n".join(
                    (
                        _encode({"id": rid, "type": "columns", "columns": [d[0] for d in cur.description]}),
                        _encode({"id": rid, "type": "rows", "rows": rows}),
                        _encode({"id": rid, "type": "done", "rows": len(rows)}),
                    )
                )
                await stream.send_all(out.encode() + b"\n")

    trio.run(trio.serve_tcp, handle, args.port)


if __name__ == "__main__":
    main()
