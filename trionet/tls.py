"""TLS for every trionet port: one set of flags, one way to build contexts, one bounded handshake.

The SQL server (both ports), the name server's DNS-over-TLS port and, later,
the ring take the same server flags, ``--tls-cert FILE --tls-key FILE``; the
client commands take ``--tls`` and ``--tls-ca FILE``. They are defined here
once, with the contexts they build, so every service refuses the same bad
files with the same one-line message and speaks the same TLS versions.

A handshake is work a client makes the server do before it has proved
anything, so it always runs under its own deadline (:func:`handshake`); a
service calls it before a client is admitted, so a stalled handshake never
holds a slot.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import click
import trio

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "EagerSocketStream",
    "TLSConfigError",
    "TLSServerConfig",
    "client_context",
    "client_tls_options",
    "handshake",
    "server_context",
    "server_end_point",
    "server_tls_options",
]

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to finish the TLS handshake (``--tls-handshake-timeout``)."""


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used: the message names the file and why."""


@dataclass(frozen=True)
class TLSServerConfig:
    """What ``--tls-cert/--tls-key/--tls-handshake-timeout`` asked for, with the context built from it."""

    context: ssl.SSLContext
    cert: str
    key: str
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


def server_context(cert: str, key: str, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` for a server: TLS 1.2 or newer, the certificate chain in ``cert``.

    Args:
        cert: PEM file with the server certificate (and its chain).
        key: PEM file with the private key.
        alpn: protocols to offer, e.g. ``["dot"]`` for DNS over TLS.

    Raises:
        TLSConfigError: a file is missing or unreadable, is not PEM, or the
            key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        _check_readable(flag, path)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot use --tls-cert {cert} with --tls-key {key}: {exc.reason or exc} "
            "(both must be PEM files, and the key must belong to the certificate)"
        ) from None
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def server_end_point(cert: str) -> bytes | None:
    """The ``tls-server-end-point`` channel binding (RFC 5929) of the first certificate in the PEM file ``cert``.

    That is the hash of the certificate (DER), by the hash of its signature
    algorithm (SHA-256 for MD5 and SHA-1), as PostgreSQL's SCRAM-SHA-256-PLUS
    and libpq compute it: a client that compares it with the certificate it
    was shown knows that no one relays the TLS session in the middle. The
    certificate is read with ``asn1crypto`` (what scramp reads it with).

    Returns:
        None when the file holds no readable certificate, or its signature is
        neither RSA PKCS#1 v1.5 nor ECDSA (Ed25519, RSA-PSS, DSA): channel
        binding is then not offered, as libpq could not compute it.
    """
    # Imported here: only a PostgreSQL port with TLS and --users needs it, once at start.
    from asn1crypto import pem
    from asn1crypto.x509 import Certificate

    try:
        with open(cert, "rb") as f:
            pem_bytes = f.read(1 << 20)
        der = next(d for kind, _, d in pem.unarmor(pem_bytes, multiple=True) if kind == "CERTIFICATE")
        signature = Certificate.load(der)["signature_algorithm"]
        if signature.signature_algo not in ("rsassa_pkcs1v15", "ecdsa"):
            return None
        name = signature.hash_algo
    except (OSError, ValueError, TypeError, KeyError, StopIteration):
        return None
    return hashlib.new("sha256" if name in ("md5", "sha1") else name, der).digest()


def client_context(ca: str | None = None, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` for a client that verifies the server.

    Args:
        ca: PEM file of the certificate authority to trust; None trusts the
            system's store.
        alpn: protocols to offer.

    Raises:
        TLSConfigError: ``ca`` is missing or not a PEM certificate.
    """
    if ca is not None:
        _check_readable("--tls-ca", ca)
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot use --tls-ca {ca}: {exc.reason or exc} (it must be a PEM certificate)") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _check_readable(flag: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise TLSConfigError(f"cannot read {flag} {path}: no such file") from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read {flag} {path}: {exc.strerror}") from None


async def handshake(stream: trio.abc.Stream, context: ssl.SSLContext, timeout: float, **kwargs) -> trio.SSLStream:
    """Wrap ``stream`` in TLS as the server and finish the handshake within ``timeout`` seconds.

    Args:
        stream: the accepted connection.
        context: from :func:`server_context`.
        timeout: seconds; a peer that has not finished by then is dropped.
        **kwargs: passed to ``trio.SSLStream`` (``https_compatible``, ...).

    Returns:
        The TLS stream, ready for application data.

    Raises:
        trio.TooSlowError: the handshake took longer than ``timeout``.
        trio.BrokenResourceError: the peer is not speaking TLS, or broke off.
    """
    transport = EagerSocketStream(stream) if type(stream) is trio.SocketStream else stream
    tls = trio.SSLStream(transport, context, server_side=True, **kwargs)
    with trio.fail_after(timeout):
        await tls.do_handshake()
    _acknowledge_now(stream)
    return tls


_RECEIVE_SIZE = 65536


class EagerSocketStream(trio.abc.HalfCloseableStream):
    """The TCP stream under a server's ``trio.SSLStream``: its sends finish without a scheduler round when they can.

    ``trio.SSLStream`` moves every TLS record through its transport's
    ``send_all`` and ``receive_some``; on a ``trio.SocketStream`` each of
    those takes a scheduler round and four context managers even when the
    socket is ready, and a short DNS-over-TLS connection makes about a
    dozen of them (handshake flight, answers, close_notify, reads): more
    Python than the TLS itself (docs/benchmarks.md). Here a send writes
    directly what the socket takes and waits (:func:`trio.lowlevel.wait_writable`)
    only for the rest, and a read reads directly and waits only when
    nothing has arrived; neither takes a scheduler round of its own.
    Cancellation is checked before every operation.

    Only for use under ``trio.SSLStream``: it takes its inner send or
    receive lock around every call to its transport, and acquiring a
    ``trio.Lock`` is a checkpoint (a scheduler round). So a connection that
    never pauses still lets the others run once per record, and a second
    round here would only cost (three per short DNS connection, counted
    with a trio Instrument).

    Args:
        stream: the accepted ``trio.SocketStream``; its ``socket`` is this one's.

    Error handling: as ``trio.SocketStream``: a reset connection raises
    ``trio.BrokenResourceError``, a closed socket ``trio.ClosedResourceError``.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket = stream.socket

    def _fd(self) -> int:
        # fileno() each time, never a kept number: a closed socket's is -1.
        fd = self.socket.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("socket was already closed")
        return fd

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        with memoryview(data) as view:
            while view:
                try:
                    sent = os.write(self._fd(), view)
                except BlockingIOError:
                    await self._wait(trio.lowlevel.wait_writable)
                    continue
                except OSError as exc:
                    raise _stream_error(exc) from exc
                view = view[sent:]

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = os.read(self._fd(), max_bytes or _RECEIVE_SIZE)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            return data

    async def _wait(self, wait) -> None:
        try:
            await wait(self.socket)
        except trio.ClosedResourceError:
            raise
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        # SocketStream.aclose is this close and a checkpoint; SSLStream.aclose
        # has checkpointed already (its send lock, or its own checkpoint).
        self.socket.close()
        await trio.lowlevel.checkpoint_if_cancelled()


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
        return trio.ClosedResourceError("socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


def _acknowledge_now(stream: trio.abc.Stream) -> None:
    """Acknowledge the client's last handshake flight at once, not after the delayed-ACK timer.

    A TLS 1.3 client is done with the handshake once it has sent its
    Finished, and sends its first request right behind it. Without
    TCP_NODELAY (dnsperf, Python's ``ssl`` sockets) Nagle's algorithm holds
    that request until the Finished is acknowledged, and a server with
    nothing to send yet delays that ACK: 40 ms on Linux, on every new
    connection (measured with unbound as with trionet). TCP_QUICKACK sends
    the pending ACK now. Where the option does not exist this does nothing.
    """
    sock = getattr(stream, "socket", None)
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or quickack is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
    except OSError:
        pass  # already reset by the peer: the next read says so


def server_tls_options(fn: Callable) -> Callable:
    """``--tls-cert FILE --tls-key FILE --tls-handshake-timeout SECONDS``, given to the command as ``tls``.

    ``tls`` is a :class:`TLSServerConfig`, or None when neither file is
    given. One file without the other, or files that cannot be used, is a
    usage error naming the file.
    """

    @click.option(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate (chain) to serve TLS with; needs --tls-key.",
    )
    @click.option("--tls-key", metavar="FILE", help="PEM private key of --tls-cert.")
    @click.option(
        "--tls-handshake-timeout",
        type=click.FloatRange(0, min_open=True),
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="A client that has not finished the TLS handshake by then is dropped (it never holds a slot).",
    )
    @functools.wraps(fn)
    def wrapper(*args, tls_cert: str | None, tls_key: str | None, tls_handshake_timeout: float, **kwargs):
        kwargs["tls"] = _server_config(tls_cert, tls_key, tls_handshake_timeout)
        return fn(*args, **kwargs)

    return wrapper


def _server_config(cert: str | None, key: str | None, timeout: float) -> TLSServerConfig | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "--tls-cert" if cert is None else "--tls-key"
        raise click.UsageError(f"--tls-cert and --tls-key go together: {missing} is missing")
    try:
        return TLSServerConfig(server_context(cert, key), cert, key, timeout)
    except TLSConfigError as exc:
        raise click.UsageError(str(exc)) from None


def client_tls_options(fn: Callable) -> Callable:
    """``--tls`` and ``--tls-ca FILE``, given to the command as ``tls``: an ``ssl.SSLContext`` or None.

    ``--tls-ca`` alone implies ``--tls``.
    """

    @click.option("--tls", "use_tls", is_flag=True, help="Connect with TLS, verifying the server's certificate.")
    @click.option(
        "--tls-ca",
        metavar="FILE",
        help="PEM certificate of the authority that signed the server's certificate "
        "(default: the system's trusted ones). Implies --tls.",
    )
    @functools.wraps(fn)
    def wrapper(*args, use_tls: bool, tls_ca: str | None, **kwargs):
        context = None
        if use_tls or tls_ca is not None:
            try:
                context = client_context(tls_ca)
            except TLSConfigError as exc:
                raise click.UsageError(str(exc)) from None
        kwargs["tls"] = context
        return fn(*args, **kwargs)

    return wrapper
