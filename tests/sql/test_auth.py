"""The users file, SCRAM-SHA-256 on the server's side and the NDJSON login's steps, without I/O."""

from __future__ import annotations

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.sql import protocol
from trionet.sql.auth import (
    AuthConfig,
    AuthFailed,
    ClientLogin,
    MECHANISM,
    MECHANISM_PLUS,
    HelloLogin,
    ScramClientExchange,
    ScramExchange,
    UsersFileError,
    Verifier,
    failure_message,
    load_users,
    make_verifier,
    parse_users,
    parse_verifier,
)
from trionet.sql.errors import SqlConnectionError

SECRET = b"k" * 32


def login(users, user, password, *, given_name=None):
    """Run a whole exchange; return the server's exchange (its .user) or raise AuthFailed."""
    client = ScramClientExchange(user, password)
    server = ScramExchange(users, SECRET, given_name)
    client.verify(server.final(client.final(server.first(client.first()))))
    return server


# --- the users file ---------------------------------------------------------


def test_users_file_takes_verifiers_plain_passwords_comments_and_blank_lines():
    verifier = make_verifier("pw one")
    users, plain = parse_users(f"# staff\n\nalice:{verifier}\r\n  # indented comment\nbob:pass:with:colons and spaces \n")
    assert set(users) == {"alice", "bob"}
    assert users["alice"] == verifier
    assert plain == [5]
    login(users, "alice", "pw one")
    login(users, "bob", "pass:with:colons and spaces ")


@pytest.mark.parametrize(
    "text, message",
    [
        ("alice secret\n", "users.txt:1: expected NAME:PASSWORD"),
        ("# c\n:secret\n", "users.txt:2: the name is empty"),
        ("alice:\n", "users.txt:1: user 'alice' has an empty password"),
        ("alice:a\nalice:b\n", "users.txt:2: user 'alice' is named twice"),
        (" alice:a\n", "users.txt:1: the name starts or ends with a space"),
        ("al\x01ice:a\n", "users.txt:1: the name holds a control character"),
        ("alice:SCRAM-SHA-256$4096:c2FsdA==\n", "users.txt:1: user 'alice': a verifier reads"),
        ("alice:SCRAM-SHA-256$12:AAAAAAAAAAAAAAAAAAAAAA==$AA==:AA==\n", "iteration count must be between"),
        ("alice:SCRAM-SHA-256$4096:c2FsdA==$AA==:AA==\n", "the salt must be at least 12 bytes"),
        ("alice:SCRAM-SHA-256$4096:AAAAAAAAAAAAAAAAAAAAAA==$AA==:AA==\n", "must be 32 bytes each"),
        ("alice:SCRAM-SHA-256$4096:not base64!$AA==:AA==\n", "the salt is not base64"),
        ("# nobody\n\n", "users.txt: names no user"),
    ],
)
def test_a_malformed_users_file_names_file_and_line(text, message):
    with pytest.raises(UsersFileError, match=None) as caught:
        parse_users(text, "users.txt")
    assert message in str(caught.value)


def test_load_users_says_when_the_file_is_missing(tmp_path):
    with pytest.raises(UsersFileError, match="cannot read --users .*: no such file"):
        load_users(str(tmp_path / "missing.txt"))
    (tmp_path / "latin1.txt").write_bytes(b"alice:caf\xe9\n")
    with pytest.raises(UsersFileError, match="not UTF-8 text"):
        load_users(str(tmp_path / "latin1.txt"))


def test_a_verifier_made_by_postgresql_15_is_read_and_made_alike():
    # PostgreSQL 15.18: SET password_encryption='scram-sha-256'; CREATE ROLE v PASSWORD 'postgres';
    # SELECT rolpassword FROM pg_authid WHERE rolname = 'v'
    from_postgres = (
        "SCRAM-SHA-256$4096:yKPxOYKELPQJVe9yN5Hjww==$xS1esWkgtFmOMSGp+YkQYFYGyEbJltQNLF2ycxGuxq8="
        ":PTMTK6b8yzObgRNwrLv5ziTF+LkjlmjHm2kjkqmTxLk="
    )
    verifier = parse_verifier(from_postgres)
    assert str(make_verifier("postgres", salt=verifier.salt)) == from_postgres
    users, plain = parse_users(f"v:{from_postgres}\n")
    assert plain == []
    login(users, "v", "postgres")


@settings(deadline=None)  # each plain password costs a PBKDF2 of 4096 rounds (a few ms)
@given(st.text(max_size=300))
def test_parse_users_raises_only_its_own_error(text):
    try:
        users, plain = parse_users(text, "f")
    except UsersFileError as exc:
        assert str(exc).startswith("f")
    else:
        assert users and all(isinstance(v, Verifier) for v in users.values())
        assert all(isinstance(n, int) for n in plain)


@given(
    st.builds(
        lambda parts, seps: "".join(p + s for p, s in zip(parts, seps)),
        st.lists(st.sampled_from(["SCRAM-SHA-256", "4096", "AAAAAAAAAAAAAAAAAAAAAA==", "x", "", "-1", "1e9"] + ["A" * 43 + "="]), min_size=5, max_size=5),
        st.lists(st.sampled_from(["$", ":", ""]), min_size=5, max_size=5),
    )
    | st.text(max_size=120)
)
def test_parse_verifier_raises_only_value_error(text):
    try:
        verifier = parse_verifier(text)
    except ValueError:
        return
    assert parse_verifier(str(verifier)) == verifier


# --- SCRAM-SHA-256, server side ------------------------------------------------


def test_the_right_password_logs_in_and_the_server_proves_itself(users):
    assert login(users, "alice", "s3cret pass").user == "alice"
    assert login(users, "bob", "hunter2").user == "bob"


def test_wrong_password_and_unknown_user_fail_alike_for_the_client(users):
    with pytest.raises(AuthFailed) as wrong:
        login(users, "alice", "guess")
    with pytest.raises(AuthFailed) as unknown:
        login(users, "mallory", "guess")
    assert (wrong.value.user, wrong.value.reason) == ("alice", "wrong password")
    assert (unknown.value.user, unknown.value.reason) == ("mallory", "unknown user")
    assert failure_message("alice") == 'password authentication failed for user "alice"'


def test_an_unknown_name_always_gets_the_same_salt(users):
    def salt_of(name):
        server = ScramExchange(users, SECRET)
        first = server.first(ScramClientExchange(name, "x").first())
        return dict(part.split("=", 1) for part in first.split(","))["s"], first

    (salt1, _), (salt2, _) = salt_of("mallory"), salt_of("mallory")
    assert salt1 == salt2 != salt_of("eve")[0]


def test_libpq_empty_name_counts_the_startup_user(users):
    # libpq sends "n,,n=,r=NONCE": the StartupMessage's user is the one that logs in.
    client = scramp.ScramClient(["SCRAM-SHA-256"], "placeholder", "hunter2")
    first = client.get_client_first().replace("n=placeholder,", "n=,")
    client.client_first_bare = first[3:]
    server = ScramExchange(users, SECRET, "bob")
    client.set_server_first(server.first(first))
    client.set_server_final(server.final(client.get_client_final()))
    assert server.user == "bob"


@pytest.mark.parametrize("scram_name", ["*", "someone else", "\u0007bell"])
def test_any_scram_name_is_ignored_when_the_startup_named_the_user(users, scram_name):
    client = scramp.ScramClient(["SCRAM-SHA-256"], "placeholder", "hunter2")
    first = client.get_client_first().replace("n=placeholder,", f"n={scram_name},")
    client.client_first_bare = first[3:]
    server = ScramExchange(users, SECRET, "bob")
    client.set_server_first(server.first(first))
    client.set_server_final(server.final(client.get_client_final()))
    assert server.user == "bob"


def test_the_startup_user_wins_over_the_scram_name(users):
    with pytest.raises(AuthFailed) as caught:
        login(users, "bob", "hunter2", given_name="alice")  # bob's password, alice's startup name
    assert caught.value.user == "alice"


def test_an_exchange_cannot_be_replayed(users):
    client = ScramClientExchange("bob", "hunter2")
    server = ScramExchange(users, SECRET)
    final = client.final(server.first(client.first()))
    server.final(final)
    with pytest.raises(AuthFailed):
        server.final(final)
    other = ScramExchange(users, SECRET)
    other.first(ScramClientExchange("bob", "hunter2").first())
    with pytest.raises(AuthFailed):  # a proof for another nonce
        other.final(final)


END_POINT = bytes(range(32))  # a certificate's tls-server-end-point hash


def bound_login(users, *, offered, client_binding, server_mechanism, server_binding=END_POINT):
    """A whole exchange with channel binding: scramp's client (as pg8000 uses it) against ScramExchange."""
    binding = ("tls-server-end-point", client_binding) if client_binding else None
    client = scramp.ScramClient(offered, "bob", "hunter2", channel_binding=binding)
    server = ScramExchange(users, SECRET, "bob", mechanism=server_mechanism, channel_binding=server_binding)
    client.set_server_first(server.first(client.get_client_first()))
    client.set_server_final(server.final(client.get_client_final()))
    return server


def test_scram_sha_256_plus_binds_the_server_certificate(users):
    both = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    server = bound_login(users, offered=both, client_binding=END_POINT, server_mechanism=MECHANISM_PLUS)
    assert (server.user, server.mechanism) == ("bob", "SCRAM-SHA-256-PLUS")
    # A relay in the middle shows the client its own certificate: the hashes differ, the login fails.
    with pytest.raises(AuthFailed) as relayed:
        bound_login(users, offered=both, client_binding=b"\xff" * 32, server_mechanism=MECHANISM_PLUS)
    assert "channel bindings don't match" in relayed.value.reason


def test_channel_binding_negotiation_follows_postgresql(users):
    # Over TLS, a client that does not bind ("n") may use plain SCRAM-SHA-256 (libpq's channel_binding=disable).
    assert bound_login(users, offered=["SCRAM-SHA-256"], client_binding=None, server_mechanism=MECHANISM).user == "bob"
    # "y": the client could bind but believes the server cannot: someone removed the -PLUS offer.
    with pytest.raises(AuthFailed, match="doesn't think the server supports channel binding"):
        bound_login(users, offered=["SCRAM-SHA-256"], client_binding=END_POINT, server_mechanism=MECHANISM)
    # Without TLS (no binding on the server), "y" is the honest answer and logs in.
    assert bound_login(
        users, offered=["SCRAM-SHA-256"], client_binding=END_POINT, server_mechanism=MECHANISM, server_binding=None
    ).user == "bob"
    # Binding data under the plain mechanism's name, or -PLUS without binding: refused.
    client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], "bob", "hunter2", channel_binding=("tls-server-end-point", END_POINT))
    with pytest.raises(AuthFailed, match="binds a channel"):
        ScramExchange(users, SECRET, "bob", channel_binding=END_POINT).first(client.get_client_first())
    plus = ScramExchange(users, SECRET, "bob", mechanism=MECHANISM_PLUS, channel_binding=END_POINT)
    with pytest.raises(AuthFailed):
        plus.first(ScramClientExchange("bob", "hunter2").first())
    with pytest.raises(ValueError):
        ScramExchange(users, SECRET, "bob", mechanism=MECHANISM_PLUS)  # -PLUS needs the certificate's hash


@given(st.text(max_size=200), st.text(max_size=200))
def test_any_messages_fail_only_with_auth_failed(users, first, final):
    server = ScramExchange(users, SECRET, "alice")
    try:
        server.first(first)
        server.final(final)
    except AuthFailed:
        return
    raise AssertionError("a made-up proof was accepted")


# --- the NDJSON login ----------------------------------------------------------


def hello(auth=("SCRAM-SHA-256",)) -> protocol.Hello:
    return protocol.Hello("trionet-sql", 1, True, 10, 100, 1.0, auth=tuple(auth))


def run_ndjson_login(users, user, password, delay=1.5):
    server = HelloLogin(AuthConfig(users, failure_delay=delay, secret=SECRET))
    client = ClientLogin(hello(), user, password, "h:1")
    line = client.first()
    while True:
        step = server.receive(protocol.parse_request(line.rstrip(b"\n")))
        if step.done and step.user is None:
            return step
        line = client.receive(protocol.parse_reply(step.reply.rstrip(b"\n")))
        if line is None:
            return step


def test_the_ndjson_login_accepts_the_right_password(users):
    step = run_ndjson_login(users, "alice", "s3cret pass")
    assert step.done and step.user == "alice" and step.delay == 0


def test_the_ndjson_login_refuses_after_the_delay_with_bye_auth_failed(users):
    for user in ("alice", "nobody"):
        step = run_ndjson_login(users, user, "guess")
        assert step.done and step.user is None and step.delay == 1.5
        bye = protocol.parse_reply(step.reply.rstrip(b"\n"))
        assert bye == protocol.Bye(f'password authentication failed for user "{user}"', "auth_failed")
        with pytest.raises(SqlConnectionError, match="refused the login \\(auth_failed\\)"):
            ClientLogin(hello(), user, "x", "h:1").receive(bye)


def test_a_request_before_the_login_ends_the_connection(users):
    server = HelloLogin(AuthConfig(users, secret=SECRET))
    step = server.receive(protocol.parse_request(b"SELECT 1"))
    assert step.done and step.user is None and step.delay == 0
    assert protocol.parse_reply(step.reply.rstrip(b"\n")).code == "auth_required"
    step = HelloLogin(AuthConfig(users)).receive(protocol.AuthMessage("PLAIN", "x"))
    assert protocol.parse_reply(step.reply.rstrip(b"\n")).code == "auth_failed"


def test_a_client_without_credentials_says_how_to_give_them():
    with pytest.raises(SqlConnectionError, match="needs a user and password: give --user NAME"):
        ClientLogin(hello(), None, None, "h:1")
    with pytest.raises(SqlConnectionError, match="asks for authentication by KERBEROS"):
        ClientLogin(hello(["KERBEROS"]), "a", "b", "h:1")


def test_a_client_refuses_a_server_that_does_not_know_the_verifier(users):
    client = ClientLogin(hello(), "alice", "s3cret pass", "h:1")
    server = ScramExchange(users, SECRET)
    first = protocol.parse_request(client.first().rstrip(b"\n"))
    client.receive(protocol.AuthChallenge(server.first(first.data)))
    with pytest.raises(SqlConnectionError, match="did not prove"):
        client.receive(protocol.AuthOk("v=" + "A" * 43 + "="))


def test_auth_frames_round_trip_and_a_stray_type_is_still_a_bad_request():
    assert protocol.parse_request(b'{"type":"auth","mechanism":"SCRAM-SHA-256","data":"n,,n=a,r=x"}') == protocol.AuthMessage(
        "SCRAM-SHA-256", "n,,n=a,r=x"
    )
    assert isinstance(protocol.parse_request(b'{"type":"auth","data":5}'), protocol.BadRequest)
    assert isinstance(protocol.parse_request(b'{"type":"auth","data":"x","sql":"s"}'), protocol.BadRequest)
    assert isinstance(protocol.parse_request(b'{"type":"query","sql":"select 1"}'), protocol.BadRequest)
    assert protocol.parse_reply(protocol.encode_auth_ok("v=abc").rstrip(b"\n")) == protocol.AuthOk("v=abc")
    hello_line = protocol.encode_hello(read_only=True, max_rows=1, max_request_bytes=64, query_timeout=1, auth=["SCRAM-SHA-256"])
    assert protocol.parse_reply(hello_line.rstrip(b"\n")).auth == ("SCRAM-SHA-256",)
