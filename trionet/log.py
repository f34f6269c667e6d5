"""Logging set-up shared by every trionet command: one format, one ``--log-level``."""

from __future__ import annotations

import logging
import sys

__all__ = ["LOG_LEVELS", "configure", "get_logger"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "info", stream=None) -> None:
    """Send trionet's log records to ``stream`` (stderr by default) at ``level``.

    Args:
        level: one of :data:`LOG_LEVELS`, case-insensitive.
        stream: a text stream; stderr when None.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger("trionet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """Return the logger for a trionet component, e.g. ``get_logger("sql")``."""
    return logging.getLogger(f"trionet.{name}")
