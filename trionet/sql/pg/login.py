"""The PostgreSQL front's way in: TLS after an SSLRequest, and SCRAM-SHA-256 after the StartupMessage.

PostgreSQL's order, which every client expects: an SSLRequest is answered
``S`` and the TLS handshake follows at once (the rest of the startup runs
inside TLS); after the StartupMessage the server sends
AuthenticationSASL, the client a SASLInitialResponse (SCRAM's
client-first), the server AuthenticationSASLContinue, the client a
SASLResponse (with its proof), and the server AuthenticationSASLFinal then
AuthenticationOk. A wrong password or an unknown user is answered, after
``failure_delay`` seconds, with FATAL 28P01 ``password authentication
failed for user "NAME"`` (the same words for both), and the log names the
peer and the reason.

The SCRAM steps are :class:`trionet.sql.auth.ScramExchange`'s; this module
only moves its messages between the socket and the sans-IO
:class:`~trionet.sql.pg.protocol.PgServerProtocol`.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from trionet.framing import EOF
from trionet.log import get_logger
from trionet.serving import Connection, receive_event
from trionet.sql.auth import MECHANISM, MECHANISM_PLUS, AuthConfig, AuthFailed, ScramExchange, failure_message
from trionet.sql.pg import messages as m
from trionet.sql.pg.protocol import PgServerProtocol, ProtocolViolation
from trionet.sql.pg.sqlstate import PROTOCOL_VIOLATION
from trionet.tls import TLSServerConfig, handshake

__all__ = ["LoginRefused", "authenticate", "close_tls", "start_tls"]

log = get_logger("sql")

INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """The connection ends with FATAL ``code``/``message`` after ``delay`` seconds."""

    code: str
    message: str
    delay: float = 0.0


async def start_tls(conn: Connection, proto: PgServerProtocol, tls: TLSServerConfig) -> LoginRefused | bool:
    """Answer the SSLRequest just read with ``S`` and do the handshake; ``conn.stream`` becomes the TLS stream.

    Returns:
        True when TLS is up; False when the client left or failed the
        handshake (counted in ``tls_failures_total``, logged at debug
        level); a :class:`LoginRefused` when it sent bytes before the answer.
    """
    answer = proto.accept_encryption()
    if isinstance(answer, ProtocolViolation):
        return LoginRefused(PROTOCOL_VIOLATION, answer.message)
    try:
        await conn.stream.send_all(answer)
        conn.stream = await handshake(conn.stream, tls.context, tls.handshake_timeout)
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        conn.service.tls_failures_total += 1
        log.debug("pg TLS handshake failed: %s: %s", conn.peer, exc.__cause__ or exc or type(exc).__name__)
        return False
    return True


async def close_tls(conn: Connection) -> None:
    """End TLS with a close_notify before the socket closes (libpq 17+ reports an EOF without one as an error).

    Bounded by a second; a client already gone is no error.
    """
    if not isinstance(conn.stream, trio.SSLStream):
        return
    with trio.move_on_after(1):
        try:
            await conn.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def authenticate(
    conn: Connection, proto: PgServerProtocol, auth: AuthConfig, user: str, *, channel_binding: bytes | None = None
) -> LoginRefused | bool:
    """Run SCRAM-SHA-256 with the client of ``conn`` for ``user`` (the StartupMessage's).

    With ``channel_binding`` (the server certificate's ``tls-server-end-point``
    data, given when ``conn`` is TLS), SCRAM-SHA-256-PLUS is offered first
    and SCRAM-SHA-256 second, as PostgreSQL does; without it, SCRAM-SHA-256 only.

    Returns:
        True when the client proved the password (AuthenticationSASLFinal
        is sent; the caller sends AuthenticationOk with the greeting);
        False when the client left (psql does, to ask for the password,
        and comes back); a :class:`LoginRefused` to send it otherwise.

    Error handling: the caller bounds the time; ``trio.BrokenResourceError``
    and ``OSError`` from the stream count as the client leaving.
    """
    offered = (MECHANISM_PLUS, MECHANISM) if channel_binding else (MECHANISM,)
    try:
        await conn.stream.send_all(proto.send(m.AuthenticationSasl(offered)))
        event = await _password_message(conn, proto)
        if not isinstance(event, m.PasswordMessage):
            return event
        try:
            mechanism, data = m.decode_sasl_initial(event.body)
        except m.MessageError as exc:
            return LoginRefused(PROTOCOL_VIOLATION, f"malformed SASLInitialResponse: {exc}")
        if mechanism not in offered:
            return LoginRefused(INVALID_AUTHORIZATION, "client selected an invalid SASL authentication mechanism")
        exchange = ScramExchange(auth.users, auth.secret, user, mechanism=mechanism, channel_binding=channel_binding)
        server_first = exchange.first(_text(data, user))
        await conn.stream.send_all(proto.send(m.AuthenticationSaslContinue(server_first.encode())))
        event = await _password_message(conn, proto)
        if not isinstance(event, m.PasswordMessage):
            return event
        server_final = exchange.final(_text(event.body, user))
        await conn.stream.send_all(proto.send(m.AuthenticationSaslFinal(server_final.encode())))
    except AuthFailed as exc:
        log.warning("pg: authentication failed for %s: user %r: %s", conn.peer, exc.user, exc.reason)
        return LoginRefused(INVALID_PASSWORD, failure_message(user), auth.failure_delay)
    except (trio.BrokenResourceError, OSError):
        return False
    log.info("pg: %s authenticated as %r (%s)", conn.peer, user, exchange.mechanism)
    return True


async def _password_message(conn: Connection, proto: PgServerProtocol) -> m.PasswordMessage | LoginRefused | bool:
    event = await receive_event(conn.stream, proto)
    if isinstance(event, m.PasswordMessage):
        return event
    if isinstance(event, ProtocolViolation):
        return LoginRefused(PROTOCOL_VIOLATION, event.message)
    if event is EOF or isinstance(event, m.Terminate):
        log.debug("pg: %s left during authentication", conn.peer)
    return False


def _text(data: bytes, user: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthFailed(user, "malformed SCRAM message: not UTF-8") from None
