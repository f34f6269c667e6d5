"""The line port's shell: moves one line-protocol client's bytes between its socket and its session.

Requests are parsed by :class:`~trionet.names.protocol.ServerLineProtocol`;
what happens next (the deadline of each read, the quota, the bye reason) is
the :class:`~trionet.names.session.Session`'s call; admission, the shutdown
watcher and the gentle close around it are :class:`~trionet.names.server.NamesServer`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from trionet.framing import EOF
from trionet.names import protocol
from trionet.names.querylog import answer_rcode
from trionet.names.session import Refused
from trionet.serving import Connection, receive_event

if TYPE_CHECKING:
    from trionet.names.server import Client, NamesServer

__all__ = ["serve_line"]


async def serve_line(server: NamesServer, conn: Connection, client: Client) -> None:
    """Serve one line-protocol client through its session: wait, welcome, answer, bye.

    Error handling: a broken connection raises out of here (the
    :class:`~trionet.serving.TCPService` logs it); every ending the session
    decides gets its ``bye`` line first.
    """
    stream = conn.stream
    proto = protocol.ServerLineProtocol()
    session = client.session
    sends = client.sends

    async def tell_place(place: int) -> None:
        await sends.send(stream, protocol.encode_wait(place, server.admission.limit))

    try:
        admitted = await server.admit(conn, client, proto, tell_place)
    except Refused as refused:
        await sends.send(stream, protocol.encode_bye(refused.reason, refused.message))
        return
    if not admitted:
        if session.ending == "shutdown":
            await sends.send(stream, protocol.encode_bye("shutdown", session.bye()))
        return
    config = server.config
    welcome = protocol.encode_welcome(
        quota=config.quota,
        idle_timeout=config.idle_timeout,
        session_timeout=config.session_timeout,
        waited=client.ticket.waited,
    )
    await sends.send(stream, welcome)
    while True:
        if session.ending == "shutdown":
            await sends.send(stream, protocol.encode_bye("shutdown", session.bye()))
            return
        if session.pending:
            event = session.pending.popleft()
        else:
            deadline, reason = session.read_deadline(trio.current_time())
            client.wait_scope = trio.CancelScope(deadline=deadline)
            if session.ending:
                client.wait_scope.cancel()
            event = None
            with client.wait_scope:
                event = await receive_event(stream, proto)
            if event is None:
                if session.ending == "shutdown":
                    continue
                session.end(reason)
                await sends.send(stream, protocol.encode_bye(reason, session.bye()))
                return
        if event is EOF:
            return
        if isinstance(event, protocol.Quit):
            session.end("quit")
            await sends.send(stream, protocol.encode_bye("quit", session.bye()))
            return
        conn.requests += 1
        if isinstance(event, protocol.BadLine):
            reply = protocol.encode_bad_request(event.message)
        else:
            started = trio.current_time()
            answer = await server.lookup(event.qname, event.rdtype)
            reply = protocol.encode_answer(answer, event.name)
            if server.config.log_queries:
                rcode = answer_rcode(answer)
                server.log_query(conn.peer, "line", event.qname, event.rdtype, answer.source, rcode, started)
        ending = session.after_answer(trio.current_time())
        if ending:
            await sends.send(stream, reply + protocol.encode_bye(ending, session.bye()))
            return
        await sends.send(stream, reply)
