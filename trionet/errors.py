"""Exceptions as one line: the leaves of an exception group, and the message a person should read.

trio's nurseries raise ``ExceptionGroup``s; a log line or a command's error
message wants the error inside, not the group around it.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["first_message", "leaves"]


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """Yield the exceptions inside ``exc``, however deeply grouped (``exc`` itself if not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def first_message(exc: BaseException) -> str:
    """The message of the first leaf of ``exc``, or its type's name when it has none."""
    first = next(leaves(exc))
    return str(first) or type(first).__name__
