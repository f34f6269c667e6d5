"""Pipelining and streaming: many queries on one connection, and a result read row by row.

Run it against a running server (in another terminal: trionet sql serve):
    python3 examples/sql/streaming.py [--host HOST] [--port PORT]
"""

import argparse
import sys
import time

import trio

import trionet.sql


async def main(host: str, port: int) -> None:
    async with trionet.sql.connect(host, port) as conn:
        # 1. Pipelining: 200 tasks share one connection; requests go out
        #    without waiting, and each answer comes back to the task that asked.
        years = {}

        async def count(year: int) -> None:
            result = await conn.query(
                "SELECT count(*) FROM quakes WHERE time >= ? AND time < ?", [f"{year}", f"{year + 1}"]
            )
            years[year] = result.rows[0][0]

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for year in range(1995, 2016):
                nursery.start_soon(count, year)
        print(f"events per year, 21 queries pipelined in {(time.perf_counter() - started) * 1000:.0f} ms:")
        print("  " + ", ".join(f"{y}: {n}" for y, n in sorted(years.items())))

        # 2. Streaming: rows arrive in batches as we read them; the server
        #    fetches the next batch only when we have taken this one.
        largest = None
        async with conn.stream("SELECT id, mag FROM quakes ORDER BY time") as rows:
            n = 0
            async for event_id, mag in rows:
                n += 1
                if largest is None or mag > largest[1]:
                    largest = (event_id, mag)
        print(f"streamed {n} rows; the largest is {largest[0]} (M{largest[1]})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="the server's address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7401, help="the server's port (default: %(default)s)")
    args = parser.parse_args()
    try:
        trio.run(main, args.host, args.port)
    except trionet.sql.SqlConnectionError as exc:
        sys.exit(f"{exc}\nIs a server running? Start one in another terminal with: trionet sql serve --port {args.port}")
