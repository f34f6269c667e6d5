"""TCPService's accept loop: capacity errors are retried, every other error ends the service."""

from __future__ import annotations

import errno
import logging

import pytest
import trio

from trionet.serving import ACCEPT_RETRY_SECONDS, TCPService


class _FailingListener:
    """A listener whose accept() raises the given errors in turn."""

    def __init__(self, *errnos: int) -> None:
        self.errors = [OSError(code, errno.errorcode[code]) for code in errnos]
        self.calls: list[float] = []

    async def accept(self):
        self.calls.append(trio.current_time())
        raise self.errors.pop(0)


async def _no_handler(conn) -> None:  # never reached: nothing is accepted
    raise AssertionError("no connection should be accepted")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_capacity_errors_are_retried_after_a_pause_and_others_raise(autojump_clock):
    listener = _FailingListener(errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EBADF)
    logger = logging.getLogger("test_accept")  # its own handler: whatever logging other tests configured
    records = _Records()
    logger.addHandler(records)
    service = TCPService("test", _no_handler, logger)
    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError) as info:
            await service._accept_loop(listener, nursery)
    assert info.value.errno == errno.EBADF  # not retried: raised on the fifth call
    assert listener.errors == [] and len(listener.calls) == 5
    gaps = [b - a for a, b in zip(listener.calls, listener.calls[1:])]
    assert gaps == pytest.approx([ACCEPT_RETRY_SECONDS] * 4)
    logger.removeHandler(records)
    assert sum("accept failed" in m for m in records.messages) == 4
