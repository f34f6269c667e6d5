"""The hosts file is reloaded when it changes, without dropping connected clients."""

import pytest
import trio

import trionet.names as names


async def reloaded(server, loaded: int) -> None:
    """Return once the server has installed a hosts table since it had ``loaded`` reloads (5 s at most)."""
    with trio.fail_after(5):
        while server.reloads == loaded:
            await trio.sleep(0.01)


async def test_a_changed_hosts_file_is_reloaded_for_connected_clients(start_names, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.0.1 old.lan\n")
    server, addrs = await start_names(hosts_path=str(hosts), quota=0, reload_interval=0.05)
    async with names.connect(*addrs.line) as conn:
        assert (await conn.resolve("old.lan")).ok
        loaded = server.reloads
        hosts.write_text("10.1.0.2 new.lan\n# a longer file, so the size changes too\nbad line\n")
        await reloaded(server, loaded)
        # The same connection sees the new table.
        assert (await conn.resolve("new.lan")).addresses == ("10.1.0.2",)
        gone = await conn.resolve("old.lan")
        assert gone.source != "hosts"


async def test_request_reload_and_a_missing_file(start_names, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.0.1 kept.lan\n")
    server, addrs = await start_names(hosts_path=str(hosts), quota=0, reload_interval=3600)
    hosts.unlink()
    server.request_reload()  # what SIGHUP does
    with trio.fail_after(5):
        while server.watcher.stamp is not None:
            await trio.sleep(0.01)
    async with names.connect(*addrs.line) as conn:
        assert (await conn.resolve("kept.lan")).ok  # an unreadable file keeps the old table
    hosts.write_text("10.1.0.9 back.lan\n")
    loaded = server.reloads
    server.request_reload()
    await reloaded(server, loaded)
    assert server.table.lookup("back.lan", "A").records == ("10.1.0.9",)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_dns_port_answers_follow_a_reload(start_names, tmp_path, transport):
    import dns.asyncquery
    import dns.message

    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.0.1 moving.lan\n")
    server, addrs = await start_names(hosts_path=str(hosts), quota=0, reload_interval=3600)
    query = dns.message.make_query("moving.lan", "A")

    async def ask() -> str:
        ask = dns.asyncquery.tcp if transport == "tcp" else dns.asyncquery.udp
        response = await ask(query, addrs.dns[0], port=addrs.dns[1], timeout=5)
        return response.answer[0][0].to_text()

    assert await ask() == "10.1.0.1"
    assert await ask() == "10.1.0.1"  # the same bytes again: the ready-made answer
    hosts.write_text("10.1.0.2 moving.lan\n")
    loaded = server.reloads
    server.request_reload()
    await reloaded(server, loaded)
    assert await ask() == "10.1.0.2"
