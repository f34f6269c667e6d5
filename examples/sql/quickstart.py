"""Start an SQL server in this process and query it: the trionet.sql API in one page.

Run:  python3 examples/sql/quickstart.py [DB]
Without DB it serves the USGS catalogue that ships with trionet (built on first use).
"""

import sys

import trio

import trionet.sql
from trionet.sql import catalog


async def main(db_path) -> None:
    database = trionet.sql.Database(db_path)
    async with trio.open_nursery() as nursery:
        # port 0: the kernel picks a free port; start() returns once it listens
        (host, port), *_ = await nursery.start(trionet.sql.serve_sql, database, "127.0.0.1", 0)
        async with trionet.sql.connect(host, port) as conn:
            result = await conn.query("SELECT count(*), min(time), max(time) FROM quakes")
            print("events, first, last:", result.rows[0])

            result = await conn.query(
                "SELECT time, mag, place FROM quakes WHERE mag >= :m ORDER BY mag DESC",
                {"m": 6.0},
            )
            print(f"{len(result.rows)} events of magnitude 6 or more:")
            for time, mag, place in result.rows:
                print(f"  {time}  M{mag:<4}  {place}")

            try:
                await conn.query("DROP TABLE quakes")
            except trionet.sql.SqlError as exc:
                print(f"a write on a read-only server fails with code {exc.code!r}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else catalog.ensure_catalogue())
