"""The hosts-file watcher, sans-trio: which table to serve, when to read the file again, what to log.

The trio layer decides *when* to look (every ``reload_interval`` seconds
and on SIGHUP) and runs the blocking parts, :func:`stamp` and
:func:`read_hosts`, in a worker thread; :class:`HostsWatcher` decides
whether a look means a reload (:meth:`HostsWatcher.needs_reload`) and
installs what was read (:meth:`HostsWatcher.apply`), on the event loop, so
no lookup ever sees half a table.

Error handling: a file that cannot be read (missing, no permission) keeps
the table already served, with a warning; a malformed line is skipped with a
warning naming the file and the line (:mod:`trionet.names.hosts`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from trionet.names.hosts import HostsTable, HostsWarning, load_hosts

__all__ = ["HostsRead", "HostsWatcher", "read_hosts", "stamp"]

Stamp = tuple[int, int, int]


def stamp(path: str) -> Stamp | None:
    """The file's (inode, size, mtime in ns), or None when it cannot be stat-ed; blocking, thread-safe."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class HostsRead:
    """What one read of the hosts file found: its stamp, and a table with warnings or the error."""

    stamp: Stamp | None
    table: HostsTable | None = None
    warnings: list[HostsWarning] = field(default_factory=list)
    error: OSError | None = None


def read_hosts(path: str) -> HostsRead:
    """Stat and parse the hosts file; blocking, changes nothing, so safe in a worker thread."""
    found = stamp(path)
    try:
        table, warnings = load_hosts(path)
    except OSError as exc:
        return HostsRead(found, error=exc)
    return HostsRead(found, table, warnings)


class HostsWatcher:
    """The hosts table being served, and the stamp of the file it came from.

    Args:
        path: the hosts file; None when there is none (the table never changes).
        table: the table to serve until the file is read.
        logger: where reloads and problems are reported.

    Attributes:
        table: the table lookups use.
        stamp: the stamp of the file at the last read (None: unreadable or not read).
        reloads: how many times a table was installed from the file.
    """

    def __init__(self, path: str | None, table: HostsTable | None, logger: logging.Logger) -> None:
        self.path = path
        self.table = table or HostsTable()
        self.stamp: Stamp | None = None
        self.reloads = 0
        self._log = logger

    def needs_reload(self, current: Stamp | None, forced: bool) -> bool:
        """Whether to read the file, given its ``current`` stamp: when asked to, or when it changed."""
        return forced or current != self.stamp

    def apply(self, read: HostsRead) -> bool:
        """Install what :func:`read_hosts` returned; True when a new table is served.

        Error handling: an unreadable file keeps the old table (False) and
        logs a warning; each skipped line is logged.
        """
        self.stamp = read.stamp
        if read.error is not None:
            error = read.error
            self._log.warning(
                "cannot read hosts file %s: %s; keeping %d name(s)", self.path, error.strerror or error, len(self.table)
            )
            return False
        for warning in read.warnings:
            self._log.warning("%s", warning)
        self.table = read.table
        self.reloads += 1
        self._log.info("hosts file %s: %d name(s)", self.path, len(read.table))
        return True
