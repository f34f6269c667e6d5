"""Baseline for tools/bench_sql.py: the least a trio TCP server can do per request.

Each received chunk is sent straight back. The load generator sends one
request line and waits for one line, so this measures trio's per-request
cost (a receive, a send, two trips through the scheduler) with no parsing,
no SQLite and no encoding: the ceiling a trio server cannot beat.

Usage: ``python3 tools/baselines/echo_server.py --port PORT``
"""

from __future__ import annotations

import argparse
import functools

import trio

__all__ = ["echo", "main"]


async def echo(stream: trio.SocketStream) -> None:
    """Send back every chunk until the client closes."""
    try:
        async for chunk in stream:
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client left: nothing to clean up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        trio.run(functools.partial(trio.serve_tcp, echo, args.port, host=args.host))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
