"""The PostgreSQL port's TLS (SSLRequest) and SCRAM-SHA-256 logins: the protocol core, raw wire, psql, psycopg."""

from __future__ import annotations

import os
import struct

import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from trionet.framing import EOF, NEED_DATA
from trionet.sql.auth import AuthConfig
from trionet.sql.engine import Database
from trionet.sql.pg import PgConfig, PgServer
from trionet.sql.pg import messages as m
from trionet.sql.pg.protocol import PgServerProtocol, ProtocolViolation

from .conftest import cancel_an_endless_query, error_fields, read_messages, startup_packet, typed

try:
    import psycopg
except ImportError:  # the test extra installs it; a developer without it skips, CI fails
    psycopg = None

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


@pytest.fixture
def start(nursery, quake_db, users):
    """``server, (host, port) = await start(tls=..., auth=True, **config)``."""

    async def go(*, tls=None, auth: bool = True, failure_delay: float = 0.05, **config):
        access = AuthConfig(users, failure_delay=failure_delay) if auth else None
        server = PgServer(Database(quake_db), PgConfig(**config), tls=tls, auth=access)
        addresses = await nursery.start(server.serve, "127.0.0.1", 0)
        return server, addresses[0]

    return go


def dsn(address, **extra) -> str:
    host, port = address
    params = {"host": host, "port": port, "dbname": "quakes", "connect_timeout": 10, **extra}
    return " ".join(f"{k}={v}" for k, v in params.items())


async def run(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


async def psql(conninfo: str, *args: str, password: str | None = None):
    env = {**os.environ, "PSQLRC": os.devnull}
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = password
    return await trio.run_process(
        ["psql", "-X", "-w", "-A", "-t", conninfo, *args],
        capture_stdout=True, capture_stderr=True, env=env, check=False,
    )


async def read_all(stream) -> list[tuple[str, bytes]]:
    """Every backend message until the server closes."""
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return read_messages(data)


# --- the sans-IO core -----------------------------------------------------------


def test_core_expects_only_password_messages_between_sasl_and_ok():
    proto = PgServerProtocol()
    proto.receive_data(startup_packet(user="alice") + typed(b"p", b"data") + typed(b"Q", b"select 1\0"))
    assert isinstance(proto.next_event(), m.StartupMessage)
    proto.send(m.AuthenticationSasl(("SCRAM-SHA-256",)))
    assert proto.in_auth
    assert proto.next_event() == m.PasswordMessage(b"data")
    violation = proto.next_event()
    assert isinstance(violation, ProtocolViolation) and "expected a password response" in violation.message


def test_core_leaves_auth_at_ok_and_then_refuses_password_messages():
    proto = PgServerProtocol()
    proto.receive_data(startup_packet(user="alice"))
    proto.next_event()
    proto.send(m.AuthenticationSasl(("SCRAM-SHA-256",)))
    proto.send(m.AuthenticationOk())
    assert not proto.in_auth
    proto.receive_data(typed(b"p", b"late"))
    assert proto.next_event() == m.UnexpectedMessage("p")


def test_core_refuses_bytes_sent_after_an_ssl_request_before_the_answer():
    proto = PgServerProtocol()
    proto.receive_data(SSL_REQUEST + startup_packet(user="injected"))
    assert isinstance(proto.next_event(), m.SslRequest)
    assert isinstance(proto.accept_encryption(), ProtocolViolation)
    clean = PgServerProtocol()
    clean.receive_data(SSL_REQUEST)
    assert isinstance(clean.next_event(), m.SslRequest)
    assert clean.accept_encryption() == b"S"
    assert clean.next_event() is NEED_DATA


def test_sasl_messages_encode_and_decode():
    assert m.encode(m.AuthenticationSasl(("SCRAM-SHA-256",))) == b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"
    assert m.encode(m.AuthenticationSaslContinue(b"r=x")) == b"R\0\0\0\x0b\0\0\0\x0br=x"
    assert m.encode(m.AuthenticationSaslFinal(b"v=y")) == b"R\0\0\0\x0b\0\0\0\x0cv=y"
    assert m.decode_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x03abc") == ("SCRAM-SHA-256", b"abc")
    for bad in (b"SCRAM-SHA-256\0\xff\xff\xff\xff", b"SCRAM-SHA-256\0\0\0\0\x09abc", b"x"):
        with pytest.raises(m.MessageError):
            m.decode_sasl_initial(bad)


@given(st.binary(max_size=64))
def test_decode_sasl_initial_raises_only_message_error(body):
    try:
        mechanism, data = m.decode_sasl_initial(body)
    except m.MessageError:
        return
    assert body == mechanism.encode() + b"\0" + struct.pack("!i", len(data)) + data


@given(st.binary(max_size=200))
def test_the_auth_phase_turns_any_bytes_into_password_messages_or_a_violation(data):
    proto = PgServerProtocol()
    proto.receive_data(startup_packet(user="alice"))
    proto.next_event()
    proto.send(m.AuthenticationSasl(("SCRAM-SHA-256",)))
    proto.receive_data(data)
    proto.receive_data(b"")
    for _ in range(len(data) + 2):
        event = proto.next_event()
        assert isinstance(event, (m.PasswordMessage, m.Terminate, ProtocolViolation)) or event in (NEED_DATA, EOF)
        if event is EOF:
            break


# --- raw wire -------------------------------------------------------------------


async def send_wrong_proof(stream, user: str = "alice") -> None:
    """Start up as ``user`` and answer SCRAM with a made-up proof, as libpq would (empty SCRAM name)."""
    await stream.send_all(startup_packet(user=user, database="quakes"))
    with trio.fail_after(10):
        sasl = await stream.receive_some(1000)
    assert read_messages(sasl) == [("R", b"\0\0\0\x0aSCRAM-SHA-256\0\0")]
    first = b"n,,n=,r=abcdefghijkl"
    await stream.send_all(typed(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
    with trio.fail_after(10):
        [(kind, body)] = read_messages(await stream.receive_some(1000))
    assert kind == "R" and body[:4] == b"\0\0\0\x0b"
    nonce = dict(p.split(b"=", 1) for p in body[4:].split(b","))[b"r"]
    await stream.send_all(typed(b"p", b"c=biws,r=" + nonce + b",p=" + b"A" * 43 + b"="))


async def test_a_wrong_password_is_28p01_and_the_log_names_the_peer(start, sql_log):
    server, address = await start()
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await send_wrong_proof(stream)
        [(kind, body)] = await read_all(stream)
    assert kind == "E"
    fields = error_fields(body)
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "28P01", 'password authentication failed for user "alice"')
    assert any("authentication failed for 127.0.0.1:" in line and "'alice': wrong password" in line for line in sql_log)
    assert server.auth_failures_total == 1


@pytest.mark.requires_module("psycopg")
async def test_a_failed_login_waits_alone(start):
    """While one client waits out its failure delay, another logs in and is served."""
    _, address = await start(failure_delay=60)
    wrong = await trio.open_tcp_stream(*address)
    async with wrong:
        await send_wrong_proof(wrong)

        def go():
            with psycopg.connect(dsn(address, user="bob", password="hunter2")) as conn:
                return conn.execute("select count(*) from quakes").fetchone()

        assert await run(go) == (2000,)
        with trio.move_on_after(0.2) as still_waiting:
            await wrong.receive_some(100)
        assert still_waiting.cancelled_caught  # its answer is still 60 s away


async def test_ssl_request_without_tls_is_still_n_and_gssenc_is_always_n(start, tls_config):
    _, plain = await start(auth=False)
    _, secured = await start(tls=tls_config, auth=False)
    for address, request, answer in ((plain, SSL_REQUEST, b"N"), (secured, GSSENC_REQUEST, b"N")):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(request)
            with trio.fail_after(10):
                assert await stream.receive_some(10) == answer


async def test_plain_startup_on_a_tls_server_is_refused_28000(start, tls_config):
    _, address = await start(tls=tls_config)
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(startup_packet(user="alice", database="quakes"))
        [(kind, body)] = await read_all(stream)
    assert kind == "E" and error_fields(body)["C"] == "28000"
    assert "accepts only TLS" in error_fields(body)["M"]


async def test_bytes_after_an_ssl_request_are_refused_before_any_tls(start, tls_config):
    _, address = await start(tls=tls_config)
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(SSL_REQUEST + startup_packet(user="alice"))
        [(kind, body)] = await read_all(stream)
    assert kind == "E" and error_fields(body)["C"] == "08P01"


@pytest.mark.requires_module("psycopg")
async def test_a_stalled_tls_handshake_holds_no_slot(start, tls_config, tls_files):
    server, address = await start(tls=tls_config, auth=False, max_connections=1)
    staller = await trio.open_tcp_stream(*address)
    async with staller:
        await staller.send_all(SSL_REQUEST)
        with trio.fail_after(10):
            assert await staller.receive_some(1) == b"S"
        # ... and never sends its ClientHello. The one slot is still free:
        def go():
            with psycopg.connect(dsn(address, user="x", sslmode="verify-full", sslrootcert=tls_files[2])) as conn:
                return conn.execute("select 1").fetchone(), conn.info.pgconn.ssl_in_use

        assert await run(go) == ((1,), True)
        with trio.fail_after(10):  # the staller is dropped at --tls-handshake-timeout
            assert await staller.receive_some(100) == b""
    assert server.service.tls_failures_total == 1


# --- psql and psycopg -------------------------------------------------------------


@pytest.mark.requires_tool("psql", "postgresql-client")
async def test_psql_verify_full_with_pgpassword(start, tls_config, tls_files):
    _, (host, port) = await start(tls=tls_config)
    conninfo = f"host={host} port={port} dbname=quakes user=alice sslmode=verify-full sslrootcert={tls_files[2]}"
    result = await psql(conninfo, "-c", "select count(*) from quakes", password="s3cret pass")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "2000"


@pytest.mark.requires_tool("psql", "postgresql-client")
async def test_psql_du_lists_the_users_of_the_users_file(start):
    _, (host, port) = await start()
    result = await psql(f"host={host} port={port} dbname=quakes user=bob", "-c", "\\du", "-c", "\\du a*", password="hunter2")
    assert result.returncode == 0, result.stderr.decode()
    # Every user logs in and has no other attribute (none is a superuser: is_superuser is off).
    assert result.stdout.decode().splitlines() == ["alice||{}", "bob||{}", "alice||{}"]


@pytest.mark.requires_tool("psql", "postgresql-client")
async def test_psql_channel_binding_require_over_tls_uses_scram_sha_256_plus(start, tls_config, tls_files, sql_log):
    _, (host, port) = await start(tls=tls_config)
    base = f"host={host} port={port} dbname=quakes user=alice sslmode=verify-full sslrootcert={tls_files[2]}"
    for binding in ("require", "disable"):
        result = await psql(f"{base} channel_binding={binding}", "-c", "select 1", password="s3cret pass")
        assert result.returncode == 0, result.stderr.decode()
    logins = [line.rsplit(" ", 1)[-1] for line in sql_log if "authenticated as 'alice'" in line]
    assert logins == ["(SCRAM-SHA-256-PLUS)", "(SCRAM-SHA-256)"]  # the server offers both over TLS


@pytest.mark.requires_tool("psql", "postgresql-client")
async def test_psql_channel_binding_require_fails_clearly_without_tls(start, tls_config):
    _, (host, port) = await start()  # --users, no TLS: only SCRAM-SHA-256 is offered
    result = await psql(f"host={host} port={port} dbname=quakes user=alice channel_binding=require", "-c", "select 1", password="s3cret pass")
    assert result.returncode == 2
    assert "channel binding required, but SSL not in use" in result.stderr.decode()
    _, (host, port) = await start(tls=tls_config, auth=False)  # TLS, but the server trusts: nothing to bind
    result = await psql(
        f"host={host} port={port} dbname=quakes user=alice sslmode=require channel_binding=require", "-c", "select 1"
    )
    assert result.returncode == 2
    assert "channel binding required, but server authenticated client without channel binding" in result.stderr.decode()


@pytest.mark.requires_tool("psql", "postgresql-client")
async def test_psql_wrong_password_and_unknown_user_read_alike(start, tls_config, tls_files):
    _, (host, port) = await start(tls=tls_config)
    for user, password in (("alice", "guess"), ("mallory", "guess")):
        conninfo = f"host={host} port={port} dbname=quakes user={user} sslmode=verify-full sslrootcert={tls_files[2]}"
        result = await psql(conninfo, "-c", "select 1", password=password)
        assert result.returncode == 2
        assert f'FATAL:  password authentication failed for user "{user}"' in result.stderr.decode()


@pytest.mark.requires_tool("psql", "postgresql-client")
async def test_psql_without_a_password_is_told_the_server_wants_one(start):
    _, (host, port) = await start()
    result = await psql(f"host={host} port={port} dbname=quakes user=bob sslmode=prefer", "-c", "select 1")
    assert result.returncode == 2
    assert "no password supplied" in result.stderr.decode()


@pytest.mark.requires_tool("psql", "postgresql-client")
async def test_psql_refuses_a_server_its_ca_did_not_sign(start, tls_config, tmp_path):
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    _, (host, port) = await start(tls=tls_config)
    result = await psql(f"host={host} port={port} user=bob sslmode=verify-full sslrootcert={other}", "-c", "select 1", password="hunter2")
    assert result.returncode == 2 and "certificate verify failed" in result.stderr.decode()


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
@pytest.mark.requires_module("psycopg")
async def test_psycopg_over_tls_with_scram(start, tls_config, tls_files, sslmode):
    _, address = await start(tls=tls_config)

    def go():
        with psycopg.connect(dsn(address, user="alice", password="'s3cret pass'", sslmode=sslmode, sslrootcert=tls_files[2])) as conn:
            row = conn.execute("select mag from quakes where id = %s", ("q00001",)).fetchone()
            return row, conn.info.pgconn.ssl_in_use, conn.info.user

    assert await run(go) == ((3.1,), True, "alice")


@pytest.mark.requires_module("psycopg")
async def test_psycopg_channel_binding_require(start, tls_config, tls_files, sql_log):
    _, tls_address = await start(tls=tls_config)
    _, plain_address = await start()

    def go():
        with psycopg.connect(dsn(tls_address, user="bob", password="hunter2", sslmode="verify-full",
                                 sslrootcert=tls_files[2], channel_binding="require")) as conn:
            row = conn.execute("select count(*) from quakes").fetchone()
        try:
            psycopg.connect(dsn(plain_address, user="bob", password="hunter2", channel_binding="require"))
        except psycopg.OperationalError as exc:
            return row, str(exc)
        return row, None

    row, refused = await run(go)
    assert row == (2000,)
    assert any("authenticated as 'bob' (SCRAM-SHA-256-PLUS)" in line for line in sql_log)
    assert refused is not None and "channel binding required, but SSL not in use" in refused


@pytest.mark.requires_module("psycopg")
async def test_psycopg_unknown_user_is_28p01_like_a_wrong_password(start):
    _, address = await start()

    def go(user):
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(dsn(address, user=user, password="guess"))
        return str(caught.value).strip().splitlines()[-1]

    wrong, unknown = await run(go, "alice"), await run(go, "mallory")
    assert wrong.endswith('password authentication failed for user "alice"')
    assert unknown.endswith('password authentication failed for user "mallory"')


@pytest.mark.parametrize("inside_tls", [False, True])
@pytest.mark.requires_module("psycopg")
async def test_cancel_reaches_a_statement_on_a_tls_server(start, tls_config, tls_files, inside_tls):
    # libpq before 17 (psql 15's Ctrl-C) sends its CancelRequest in plain text, even to a TLS server;
    # libpq 17's PQcancelCreate (psycopg's cancel_safe) sends it inside TLS.
    server, address = await start(tls=tls_config, query_timeout=60)
    conn = await run(lambda: psycopg.connect(
        dsn(address, user="bob", password="hunter2", sslmode="verify-full", sslrootcert=tls_files[2]), autocommit=True
    ))

    async def cancel() -> None:
        if inside_tls:
            await run(conn.cancel_safe)
        else:
            [(pid, (secret, _))] = server._keys.items()
            async with await trio.open_tcp_stream(*address) as plain:
                await plain.send_all(struct.pack("!iiii", 16, 80877102, pid, secret))
                with trio.fail_after(10):
                    assert await plain.receive_some(10) == b""

    try:
        error = await cancel_an_endless_query(server, conn, cancel)
        assert isinstance(error, psycopg.errors.QueryCanceled)
    finally:
        await run(conn.close)


async def test_a_startup_message_with_no_user_fails_like_any_unknown_name(start):
    _, address = await start()
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(startup_packet(database="quakes"))
        with trio.fail_after(10):
            await stream.receive_some(1000)
        await stream.send_all(typed(b"p", b"PLAIN\0\0\0\0\x01x"))
        [(kind, body)] = await read_all(stream)
    assert kind == "E" and error_fields(body)["C"] == "28000"
