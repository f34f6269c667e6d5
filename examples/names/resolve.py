"""Start a name server in this process with the example hosts file, and ask it questions.

Run:  python3 examples/names/resolve.py
It serves examples/names/hosts with no upstream (so names the file lacks
fail cleanly), a limit of 3 clients and a quota of 4 queries per client.
"""

from pathlib import Path

import dns.asyncquery
import dns.message
import trio

import trionet.names
from trionet.names.server import NamesConfig, NamesServer, serve_names

HOSTS = Path(__file__).with_name("hosts")


async def main() -> None:
    server = NamesServer(NamesConfig(limit=3, quota=4), hosts_path=str(HOSTS))
    async with trio.open_nursery() as nursery:
        where = await nursery.start(serve_names, server, "127.0.0.1", 0, 0)
        print(f"line protocol on port {where.line[1]}, DNS over TCP on port {where.dns[1]}")

        # The line protocol, through the trio client: four questions, then the quota.
        async with trionet.names.connect(*where.line) as conn:
            for name, rdtype in [("gw", "A"), ("files.lan", "AAAA"), ("10.0.0.2", None), ("nosuch.lan", "A")]:
                answer = await conn.resolve(name, rdtype)
                print(f"  {name:<11} {answer.rdtype:<4} {answer.status:<8} {' '.join(answer.addresses) or '-':<10} "
                      f"from {answer.source}")
            try:
                await conn.resolve("printer")
            except trionet.names.QuotaReached:
                print("  fifth question: the server ended the session at the quota of 4")

        # Standard DNS over TCP, with dnspython, as dig +tcp would ask.
        query = dns.message.make_query("gateway.lan", "A")
        response = await dns.asyncquery.tcp(query, "127.0.0.1", port=where.dns[1], timeout=5)
        print(f"DNS over TCP: {response.answer[0].to_text()}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
