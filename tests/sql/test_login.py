"""The NDJSON port's TLS (from the first byte) and SCRAM-SHA-256 login in the hello exchange, over real sockets."""

from __future__ import annotations

import json

import pytest
import trio

from trionet.sql import protocol
from trionet.serving import receive_event
from trionet.sql.auth import AuthConfig, ClientLogin
from trionet.sql.client import connect
from trionet.sql.engine import Database
from trionet.sql.errors import SqlConnectionError
from trionet.sql.server import SqlServer, SqlServerConfig
from trionet.sql.shell import BlockingConnection
from trionet.tls import client_context


@pytest.fixture
def start(nursery, quake_db, users):
    """``server, (host, port) = await start(tls=..., auth=True, **config)``."""

    async def go(*, tls=None, auth: bool = True, failure_delay: float = 0.05, timeout: float = 10.0, **config):
        access = AuthConfig(users, failure_delay=failure_delay, timeout=timeout) if auth else None
        server = SqlServer(Database(quake_db), SqlServerConfig(**config), tls=tls, auth=access)
        addresses = await nursery.start(server.serve, "127.0.0.1", 0)
        return server, addresses[0]

    return go


async def lines_until_close(stream) -> list[dict]:
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_tls_and_login_then_queries(start, tls_config, tls_files):
    _, (host, port) = await start(tls=tls_config)
    async with connect(host, port, tls=client_context(tls_files[2]), user="alice", password="s3cret pass") as conn:
        assert conn.server.auth == ("SCRAM-SHA-256",)
        result = await conn.query("select count(*) from quakes")
        assert result.rows == [(2000,)]


async def test_login_without_tls(start):
    _, (host, port) = await start()
    async with connect(host, port, user="bob", password="hunter2") as conn:
        assert (await conn.query("select 1")).rows == [(1,)]


async def test_wrong_password_and_unknown_user_get_the_same_bye(start, sql_log):
    _, (host, port) = await start()
    messages = []
    for user in ("alice", "mallory"):
        with pytest.raises(SqlConnectionError) as caught:
            async with connect(host, port, user=user, password="guess"):
                pass
        messages.append(caught.value.message)
    assert messages == [
        f'{host}:{port} refused the login (auth_failed): password authentication failed for user "{user}"'
        for user in ("alice", "mallory")
    ]
    assert any("authentication failed for 127.0.0.1:" in line and "'alice': wrong password" in line for line in sql_log)
    assert any("'mallory': unknown user" in line for line in sql_log)


async def test_failed_logins_and_handshakes_are_counted_in_the_metrics(start, tls_config, tls_files):
    from trionet.sql.metrics import sql_registry

    server, (host, port) = await start(tls=tls_config)
    registry = sql_registry(server)
    with pytest.raises(SqlConnectionError):
        async with connect(host, port, tls=client_context(tls_files[2]), user="alice", password="guess"):
            pass
    plain = await trio.open_tcp_stream(host, port)
    async with plain:
        await plain.send_all(b"SELECT 1\n")
        with trio.fail_after(10):
            while await plain.receive_some(1000):
                pass
    assert registry.get_sample_value("trionet_sql_auth_failures_total", {"port": "sql"}) == 1
    assert registry.get_sample_value("trionet_sql_tls_failures_total", {"port": "sql"}) == 1


async def test_no_credentials_to_a_server_that_wants_them(start):
    _, (host, port) = await start()
    with pytest.raises(SqlConnectionError, match="needs a user and password: give --user NAME"):
        async with connect(host, port):
            pass


async def test_a_request_before_login_gets_bye_auth_required(start):
    _, address = await start()
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"SELECT count(*) FROM quakes\n")
        frames = await lines_until_close(stream)
    assert frames[0]["type"] == "hello" and frames[0]["auth"] == ["SCRAM-SHA-256"]
    assert frames[1:] == [{"type": "bye", "code": "auth_required", "reason": frames[1]["reason"]}]
    assert "--user NAME" in frames[1]["reason"]


async def test_a_silent_client_is_dropped_at_the_auth_timeout(start):
    _, address = await start(timeout=0.3)
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        frames = await lines_until_close(stream)
    assert [f["type"] for f in frames] == ["hello", "bye"] and frames[1]["code"] == "auth_timeout"


async def test_an_auth_message_after_login_is_a_bad_request(start):
    _, address = await start()
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        proto = protocol.ClientProtocol()
        hello = await receive_event(stream, proto)
        login = ClientLogin(hello, "bob", "hunter2", "here")
        line = login.first()
        while line is not None:
            await stream.send_all(line)
            line = login.receive(await receive_event(stream, proto))
        await stream.send_all(protocol.encode_auth("n,,n=bob,r=x", "SCRAM-SHA-256") + b"SELECT 2\n")
        error = await receive_event(stream, proto)
        assert isinstance(error, protocol.ErrorReply) and error.code == "bad_request"
        assert "only right after hello" in error.message
        assert await receive_event(stream, proto) == protocol.Columns(None, ["2"])


async def test_a_trusting_server_says_nothing_of_auth(start):
    _, (host, port) = await start(auth=False)
    async with connect(host, port, user="ignored", password="ignored") as conn:
        assert conn.server.auth == ()


async def test_a_plain_client_on_a_tls_port_is_dropped_and_others_are_served(start, tls_config, tls_files):
    server, (host, port) = await start(tls=tls_config, auth=False)
    plain = await trio.open_tcp_stream(host, port)
    async with plain:
        await plain.send_all(b"SELECT 1\n")  # not a TLS ClientHello
        with trio.fail_after(10):  # the server may send a TLS alert, then hangs up
            while await plain.receive_some(1000):
                pass
    assert server.service.tls_failures_total == 1
    assert len(server.service.connections) == 0  # it never reached admission
    async with connect(host, port, tls=client_context(tls_files[2])) as conn:
        assert (await conn.query("select 1")).rows == [(1,)]


async def test_a_stalled_handshake_holds_no_slot(start, tls_config, tls_files):
    server, (host, port) = await start(tls=tls_config, auth=False, max_connections=1)
    staller = await trio.open_tcp_stream(host, port)  # connects, never says ClientHello
    async with staller:
        async with connect(host, port, tls=client_context(tls_files[2])) as conn:
            assert (await conn.query("select 1")).rows == [(1,)]


async def test_a_tls_client_on_a_plain_port_is_told_tls_failed(start, tls_files):
    _, (host, port) = await start(auth=False)
    with pytest.raises(SqlConnectionError, match="TLS with .* failed"):
        async with connect(host, port, tls=client_context(tls_files[2])):
            pass


async def test_a_client_refuses_a_certificate_its_ca_did_not_sign(start, tls_config, tmp_path):
    import trustme

    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    _, (host, port) = await start(tls=tls_config, auth=False)
    with pytest.raises(SqlConnectionError, match="TLS with .* failed: certificate verify failed"):
        async with connect(host, port, tls=client_context(str(other))):
            pass


async def test_the_shells_blocking_client_logs_in_over_tls(start, tls_config, tls_files):
    _, (host, port) = await start(tls=tls_config)

    def go(password):
        conn = BlockingConnection(host, port, tls=client_context(tls_files[2]), user="alice", password=password)
        try:
            return conn.query("select count(*) from quakes").rows
        finally:
            conn.close()

    assert await trio.to_thread.run_sync(go, "s3cret pass") == [(2000,)]
    with pytest.raises(SqlConnectionError, match="auth_failed"):
        await trio.to_thread.run_sync(go, "guess")


async def test_a_plain_trionet_client_on_a_tls_port_is_told_to_use_tls(start, tls_config):
    _, (host, port) = await start(tls=tls_config, auth=False)  # handshake timeout: 2 s
    with pytest.raises(SqlConnectionError, match="without a hello \\(if it serves TLS, use --tls-ca\\)"):
        async with connect(host, port):
            pass
