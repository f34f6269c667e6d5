"""Who may use the SQL server: the ``--users`` file and SCRAM-SHA-256, without I/O.

Both fronts authenticate the same way, with the same users: the PostgreSQL
port inside its startup (SASL, as PostgreSQL itself does), the NDJSON port
in its hello exchange (docs/protocol/sql.md). The SCRAM arithmetic is the
``scramp`` library's; this module holds what is ours:

- :func:`parse_users`: the ``--users`` file, lines ``NAME:PASSWORD`` or
  ``NAME:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (the
  verifier PostgreSQL stores in ``pg_authid``, so no plain password need be
  on disk; :func:`make_verifier` makes one);
- :class:`ScramExchange`: one server-side exchange, two messages in and two
  out, ending in the authenticated name or :class:`AuthFailed`;
- :class:`HelloLogin`: the NDJSON port's steps around it (which frame
  answers which, when the client is refused and with which ``bye``);
- :class:`AuthConfig`: what ``--users``, ``--auth-timeout`` and
  ``--auth-failure-delay`` asked for, given to both servers.

Nothing here tells a client whether a name exists: an unknown name gets a
made-up salt that stays the same for that name (as PostgreSQL's "mock"
authentication), and fails at the proof with the same message as a wrong
password. Only the server's log says which it was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import scramp

from trionet.sql import protocol
from trionet.sql.errors import SqlConnectionError

__all__ = [
    "AuthConfig",
    "DEFAULT_AUTH_FAILURE_DELAY",
    "DEFAULT_AUTH_TIMEOUT",
    "MECHANISM",
    "MECHANISM_PLUS",
    "AuthFailed",
    "ClientLogin",
    "HelloLogin",
    "LoginStep",
    "ScramClientExchange",
    "ScramExchange",
    "UsersFileError",
    "Verifier",
    "failure_message",
    "load_users",
    "make_verifier",
    "name_problem",
    "parse_users",
    "parse_verifier",
]

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
"""SCRAM-SHA-256 with channel binding (``tls-server-end-point``): offered on the PostgreSQL port over TLS."""
_CHANNEL_BINDING = "tls-server-end-point"
DEFAULT_ITERATIONS = 4096
"""PBKDF2 rounds of a verifier made here: PostgreSQL's default ``scram_iterations``."""
DEFAULT_AUTH_FAILURE_DELAY = 1.0
"""Seconds a failed authentication waits before its answer (``--auth-failure-delay``)."""
DEFAULT_AUTH_TIMEOUT = 10.0
"""Seconds a client has to authenticate (``--auth-timeout``)."""
_KEY_BYTES = 32  # SHA-256
_MIN_SALT_BYTES = 12  # scramp's floor; PostgreSQL makes 16


class UsersFileError(ValueError):
    """The ``--users`` file cannot be used; the message names ``FILE:LINE`` and what is wrong."""


class AuthFailed(Exception):
    """An authentication did not succeed.

    Attributes:
        user: the name the client gave ("" when it gave none).
        reason: for the server's log only (``unknown user``, ``wrong password``,
            ``malformed SCRAM message: ...``); the client is told
            :func:`failure_message` whatever the reason.
    """

    def __init__(self, user: str, reason: str) -> None:
        super().__init__(f"user {user!r}: {reason}")
        self.user = user
        self.reason = reason


def failure_message(user: str) -> str:
    """What a client whose authentication failed is told: PostgreSQL's words, the same for every reason."""
    return f'password authentication failed for user "{user}"'


@dataclass(frozen=True, slots=True)
class Verifier:
    """What the server keeps of a password (RFC 5802): enough to check a proof, not to make one."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        return f"{MECHANISM}${self.iterations}:{b64(self.salt)}${b64(self.stored_key)}:{b64(self.server_key)}"


def make_verifier(password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> Verifier:
    """The SCRAM-SHA-256 verifier of ``password``, with a new random 16-byte salt unless one is given.

    Raises:
        ValueError: the password is not valid text for SCRAM (SASLprep refuses it).
    """
    try:
        salt, stored, server, iterations = scramp.ScramMechanism(MECHANISM).make_auth_info(
            password, iteration_count=iterations, salt=salt if salt is not None else secrets.token_bytes(16)
        )
    except scramp.ScramException as exc:
        raise ValueError(f"unusable password: {exc}") from None
    return Verifier(iterations, salt, stored, server)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None


def parse_verifier(text: str) -> Verifier:
    """Read ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts).

    Raises:
        ValueError: why it is not one (the message never echoes the keys).
    """
    mechanism, sep1, rest = text.partition("$")
    if mechanism != MECHANISM or not sep1:
        raise ValueError(f"a verifier starts with {MECHANISM}$")
    params, sep2, keys = rest.partition("$")
    iterations_text, sep3, salt_text = params.partition(":")
    stored_text, sep4, server_text = keys.partition(":")
    if not (sep2 and sep3 and sep4):
        raise ValueError(f"a verifier reads {MECHANISM}$<iterations>:<salt>$<StoredKey>:<ServerKey>")
    if not (iterations_text.isascii() and iterations_text.isdigit()):
        raise ValueError("the iteration count is not a number")
    iterations = int(iterations_text)
    low, high = scramp.core.IterationCount.MIN_ITERATION_COUNT, scramp.core.IterationCount.MAX_ITERATION_COUNT
    if not low <= iterations <= high:
        raise ValueError(f"the iteration count must be between {low} and {high}")
    salt = _b64(salt_text, "the salt")
    if len(salt) < _MIN_SALT_BYTES:
        raise ValueError(f"the salt must be at least {_MIN_SALT_BYTES} bytes")
    stored, server = _b64(stored_text, "the StoredKey"), _b64(server_text, "the ServerKey")
    if len(stored) != _KEY_BYTES or len(server) != _KEY_BYTES:
        raise ValueError(f"StoredKey and ServerKey must be {_KEY_BYTES} bytes each")
    return Verifier(iterations, salt, stored, server)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user's name in a users file, or None when it can."""
    if ":" in name:
        return "it holds a ':'"
    return _bad_name(name)


def _bad_name(name: str) -> str | None:
    if not name:
        return "the name is empty"
    if name != name.strip():
        return "the name starts or ends with a space"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "the name holds a control character"
    return None


def parse_users(text: str, path: str = "<users>") -> tuple[dict[str, Verifier], list[int]]:
    """Read a users file.

    Each line is ``NAME:PASSWORD`` or ``NAME:SCRAM-SHA-256$...``; blank lines
    and lines starting with ``#`` are skipped. A name holds no ``:``; a
    password may (everything after the first ``:`` is the password, spaces
    included). A plain password is turned into a verifier here, so the server
    keeps no password in memory either.

    Args:
        text: the file's contents.
        path: its name, for the messages.

    Returns:
        The users by name, and the numbers of the lines that hold a plain
        password (the caller may warn about them).

    Raises:
        UsersFileError: ``PATH:LINE: what is wrong`` for the first bad line,
            or for a file that names nobody.
    """
    users: dict[str, Verifier] = {}
    plain: list[int] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            raise UsersFileError(f"{path}:{number}: expected NAME:PASSWORD or NAME:{MECHANISM}$...")
        if problem := _bad_name(name):
            raise UsersFileError(f"{path}:{number}: {problem}")
        if name in users:
            raise UsersFileError(f"{path}:{number}: user {name!r} is named twice")
        if not secret:
            raise UsersFileError(f"{path}:{number}: user {name!r} has an empty password")
        try:
            if secret.startswith(MECHANISM + "$"):
                users[name] = parse_verifier(secret)
            else:
                users[name] = make_verifier(secret)
                plain.append(number)
        except ValueError as exc:
            raise UsersFileError(f"{path}:{number}: user {name!r}: {exc}") from None
    if not users:
        raise UsersFileError(f"{path}: names no user (lines NAME:PASSWORD or NAME:{MECHANISM}$...)")
    return users, plain


def load_users(path: str) -> tuple[dict[str, Verifier], list[int]]:
    """:func:`parse_users` of the file at ``path``.

    Raises:
        UsersFileError: the file cannot be read (the message says why), or :func:`parse_users`'s.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsersFileError(f"cannot read --users {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UsersFileError(f"cannot read --users {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsersFileError(f"cannot read --users {path}: {exc.strerror}") from None
    return parse_users(text, path)


class ScramExchange:
    """The server's side of one SCRAM-SHA-256 authentication (RFC 5802/7677), without I/O.

    ``server_first = ex.first(client_first)``, then
    ``server_final = ex.final(client_final)``: after ``final`` returns, the
    client proved it knows the password of :attr:`user`; any failure raises
    :class:`AuthFailed`, and the exchange is over.

    Args:
        users: the users file's verifiers.
        secret: a random key of the server's, which makes an unknown name's
            made-up salt stable (the same answer for the same name) without
            being guessable.
        user: the name the client already gave (PostgreSQL's StartupMessage,
            whose name wins over the SCRAM message's, usually empty); None
            takes the name from the SCRAM message (the NDJSON port).
        mechanism: the one the client selected: :data:`MECHANISM`, or
            :data:`MECHANISM_PLUS` when ``channel_binding`` is given.
        channel_binding: the server certificate's ``tls-server-end-point``
            data (:func:`trionet.tls.server_end_point`) when the connection
            is TLS and the server offered :data:`MECHANISM_PLUS`; None otherwise.

    With ``channel_binding``, the rules of RFC 5802 and PostgreSQL hold:
    :data:`MECHANISM_PLUS` must bind to ``tls-server-end-point`` with this
    data (the proof covers it, so a relay in the middle, whose certificate
    differs, fails); :data:`MECHANISM` must say ``n`` (the client does not
    bind), since ``y`` (the client thinks the server cannot) means someone
    removed the ``-PLUS`` offer, and ``p`` belongs to the other mechanism.

    Error handling: malformed messages, a channel binding that does not
    match, an unknown user and a wrong proof all raise :class:`AuthFailed`;
    nothing else escapes.
    """

    def __init__(
        self,
        users: Mapping[str, Verifier],
        secret: bytes,
        user: str | None = None,
        *,
        mechanism: str = MECHANISM,
        channel_binding: bytes | None = None,
    ) -> None:
        if mechanism not in (MECHANISM, MECHANISM_PLUS) or (mechanism == MECHANISM_PLUS and not channel_binding):
            raise ValueError(f"cannot run {mechanism} {'with' if channel_binding else 'without'} channel binding")
        self.user = user or ""
        self.mechanism = mechanism
        self._users = users
        self._secret = secret
        self._given_name = user
        self._known = False
        binding = (_CHANNEL_BINDING, channel_binding) if channel_binding else None
        self._server = scramp.ScramMechanism(mechanism).make_server(self._lookup, channel_binding=binding)
        self._done = False

    def _lookup(self, scram_name: str):
        name = self._given_name if self._given_name is not None else scram_name
        self.user = name
        verifier = self._users.get(name)
        self._known = verifier is not None
        if verifier is None:
            # PostgreSQL's mock authentication: a salt that depends only on the
            # name, keys no proof can match; the proof fails like a wrong password.
            salt = hmac.digest(self._secret, name.encode("utf-8", "surrogatepass"), hashlib.sha256)[:16]
            verifier = Verifier(DEFAULT_ITERATIONS, salt, secrets.token_bytes(32), secrets.token_bytes(32))
        return verifier.salt, verifier.stored_key, verifier.server_key, verifier.iterations

    def first(self, client_first: str) -> str:
        """Take the client-first message (``n,,n=NAME,r=NONCE``); return the server-first one.

        Raises:
            AuthFailed: the message is malformed, or asks for channel binding.
        """
        if self._done:
            raise AuthFailed(self.user, "the exchange is over")
        if self.mechanism == MECHANISM and client_first.startswith("p="):
            # scramp would quietly switch to -PLUS; PostgreSQL refuses the mix.
            self._done = True
            raise AuthFailed(self.user, f"malformed SCRAM message: {MECHANISM} selected, but the client binds a channel")
        given_bare = None
        if self._given_name is not None:
            # libpq and most PostgreSQL drivers send an empty name ("n=,"): the
            # StartupMessage's user counts. scramp refuses an empty name, so
            # it is shown a placeholder, and checks the proof against the
            # message as the client sent (and signed) it.
            client_first, given_bare = _with_placeholder_name(client_first)
        try:
            self._server.set_client_first(client_first)
            if given_bare is not None:
                self._server.client_first_bare = given_bare
            return self._server.get_server_first()
        except scramp.ScramException as exc:
            self._done = True
            raise AuthFailed(self.user, f"malformed SCRAM message: {exc}") from None

    def final(self, client_final: str) -> str:
        """Take the client-final message (with the proof); return the server-final one (the server's signature).

        Raises:
            AuthFailed: an unknown user, a wrong password, or a malformed message.
        """
        if self._done:
            raise AuthFailed(self.user, "the exchange is over")
        self._done = True
        try:
            self._server.set_client_final(client_final)
            server_final = self._server.get_server_final()
        except scramp.ScramException as exc:
            proof_failed = exc.server_error is scramp.core.ServerError.INVALID_PROOF
            if proof_failed:
                reason = "wrong password" if self._known else "unknown user"
            else:
                reason = f"malformed SCRAM message: {exc}"
            raise AuthFailed(self.user, reason) from None
        if not self._known:  # cannot happen (the keys are random), but never let it pass
            raise AuthFailed(self.user, "unknown user")
        return server_final


def _with_placeholder_name(client_first: str) -> tuple[str, str | None]:
    """``client_first`` with ``n=*`` as its name, and its bare part as the client sent it (None if malformed)."""
    header_end = client_first.find(",", client_first.find(",") + 1)
    if header_end < 0:
        return client_first, None  # malformed: scramp says why
    bare = client_first[header_end + 1 :]
    name_end = bare.find(",")
    if not bare.startswith("n=") or name_end < 0:
        return client_first, None  # malformed: scramp says why
    # Whatever name the client put there (empty from libpq, "*" from pgjdbc),
    # PostgreSQL ignores it: so do we, even one SASLprep would refuse.
    return client_first[: header_end + 1] + "n=*" + bare[name_end:], bare


class ScramClientExchange:
    """The client's side of SCRAM-SHA-256, without I/O (for the NDJSON clients).

    ``first()`` is the client-first message; ``final(server_first)`` the
    client-final one; ``verify(server_final)`` checks that the server knew the
    verifier (so a client is not fooled by a server that only pretends).

    Raises:
        AuthFailed: from ``final``/``verify`` when the server's messages are
            malformed or its signature is wrong.
    """

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        try:
            self._client = scramp.ScramClient([MECHANISM], user, password)
        except scramp.ScramException as exc:
            raise AuthFailed(user, f"cannot use this name or password: {exc}") from None

    def first(self) -> str:
        return self._client.get_client_first()

    def final(self, server_first: str) -> str:
        try:
            self._client.set_server_first(server_first)
            return self._client.get_client_final()
        except scramp.ScramException as exc:
            raise AuthFailed(self.user, f"the server's SCRAM message is wrong: {exc}") from None

    def verify(self, server_final: str) -> None:
        try:
            self._client.set_server_final(server_final)
        except scramp.ScramException as exc:
            raise AuthFailed(self.user, f"the server did not prove it knows the password: {exc}") from None


@dataclass(frozen=True)
class AuthConfig:
    """Who may connect, for both ports.

    Attributes:
        users: the ``--users`` file's verifiers, by name.
        failure_delay: seconds a failed authentication waits before its answer
            and the close (per connection: others are served meanwhile), so
            guessing passwords one connection after another is slow.
        timeout: seconds a client has to authenticate (NDJSON port; the
            PostgreSQL port's startup timeout covers its startup and
            authentication together).
        secret: the key behind unknown names' made-up salts (random per run).
    """

    users: Mapping[str, Verifier]
    failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY
    timeout: float = DEFAULT_AUTH_TIMEOUT
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)


@dataclass(frozen=True, slots=True)
class LoginStep:
    """What the NDJSON server does after one client frame of the login.

    Attributes:
        reply: bytes to send (an ``auth`` or ``auth_ok`` frame, or the ``bye``).
        done: the login is over: ``user`` is set when it succeeded; otherwise
            the connection closes after ``reply``.
        user: the authenticated name.
        delay: seconds to wait before sending ``reply`` (a failed password).
        log: why it failed, for the server's log (never sent).
    """

    reply: bytes
    done: bool = False
    user: str | None = None
    delay: float = 0.0
    log: str | None = None


class HelloLogin:
    """The NDJSON port's authentication, server side, without I/O.

    After a ``hello`` that lists ``auth``, the client sends
    ``{"type":"auth","mechanism":"SCRAM-SHA-256","data":CLIENT_FIRST}``, gets
    ``{"type":"auth","data":SERVER_FIRST}``, sends
    ``{"type":"auth","data":CLIENT_FINAL}`` and gets
    ``{"type":"auth_ok","data":SERVER_FINAL}``; a request before that ends
    the connection with ``bye auth_required``, a wrong password or unknown
    name with ``bye auth_failed`` after ``config.failure_delay``.

    Args:
        config: the users and the failure delay.
    """

    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        self._exchange: ScramExchange | None = None

    def receive(self, event) -> LoginStep:
        """The next step after ``event``, a parsed client line (:func:`trionet.sql.protocol.parse_request`)."""
        if not isinstance(event, protocol.AuthMessage):
            return LoginStep(
                protocol.encode_bye(
                    f"this server needs a user and password: authenticate with {MECHANISM} first "
                    "(trionet sql query/shell --user NAME, password from TRIONET_PASSWORD or a prompt)",
                    "auth_required",
                ),
                done=True,
                log="sent a request before authenticating",
            )
        try:
            if self._exchange is None:
                if event.mechanism != MECHANISM:
                    return LoginStep(
                        protocol.encode_bye(
                            f"unsupported authentication mechanism {event.mechanism!r}; this server offers {MECHANISM}",
                            "auth_failed",
                        ),
                        done=True,
                        log=f"asked for mechanism {event.mechanism!r}",
                    )
                self._exchange = ScramExchange(self._config.users, self._config.secret)
                return LoginStep(protocol.encode_auth_challenge(self._exchange.first(event.data)))
            server_final = self._exchange.final(event.data)
        except AuthFailed as exc:
            return LoginStep(
                protocol.encode_bye(failure_message(exc.user), "auth_failed"),
                done=True,
                delay=self._config.failure_delay,
                log=f"user {exc.user!r}: {exc.reason}",
            )
        return LoginStep(protocol.encode_auth_ok(server_final), done=True, user=self._exchange.user)


class ClientLogin:
    """The NDJSON port's authentication, client side, without I/O (both trionet clients drive it).

    ``first()`` is the line to send after a ``hello`` that lists ``auth``;
    then each server frame goes to :meth:`receive`, which returns the next
    line to send, or None once the server proved itself and accepted us.

    Args:
        hello: the server's greeting.
        user, password: the credentials; None when the caller has none.
        where: ``host:port``, for the messages.

    Raises:
        SqlConnectionError: the server needs credentials we lack, refused
            them (``bye auth_failed``), or did not prove it knows the
            verifier.
    """

    def __init__(self, hello: protocol.Hello, user: str | None, password: str | None, where: str) -> None:
        self._where = where
        if MECHANISM not in hello.auth:
            raise SqlConnectionError(f"{where} asks for authentication by {', '.join(hello.auth)}, which this client lacks")
        if user is None or password is None:
            raise SqlConnectionError(
                f"{where} needs a user and password: give --user NAME and the password in "
                "TRIONET_PASSWORD or at the prompt"
            )
        try:
            self._scram = ScramClientExchange(user, password)
        except AuthFailed as exc:
            raise SqlConnectionError(exc.reason) from None

    def first(self) -> bytes:
        return protocol.encode_auth(self._scram.first(), MECHANISM)

    def receive(self, event) -> bytes | None:
        """The next line to send after ``event``, or None when authenticated."""
        try:
            if isinstance(event, protocol.AuthChallenge):
                return protocol.encode_auth(self._scram.final(event.data))
            if isinstance(event, protocol.AuthOk):
                self._scram.verify(event.data)
                return None
        except AuthFailed as exc:
            raise SqlConnectionError(f"{self._where}: {exc.reason}") from None
        if isinstance(event, protocol.Bye):
            raise SqlConnectionError(f"{self._where} refused the login ({event.code}): {event.reason}")
        raise SqlConnectionError(f"{self._where} broke off the login ({type(event).__name__})")
