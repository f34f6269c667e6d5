"""Many sockets' pending bytes written in one system call: Linux's native AIO (``io_submit``) used as a batch of writes.

Why. The ready loop (:class:`trionet.serving.ReadyLoop`) answers a batch of
connections, then sends each connection its answers. One ``write`` per
socket wakes that socket's client at once; a client thread asleep in
``poll`` on many connections (pgbench's) is put on the loop's CPU and, as
it has slept, takes the CPU as soon as that ``write`` returns (wake-up
preemption). It reads that one answer, sends its next request, finds
nothing else ready and sleeps again; the loop and the client take turns
once per answer. Traced with ``perf`` at 32 clients: 72% of the loop's
wake-ups of pgbench switched to pgbench at once, and pgbench called
``poll`` 0.56 times per transaction, against 0.07 with PostgreSQL's
backends (docs/benchmarks.md, "Session 15").

What changes. Given to :meth:`BatchSender.send`, the writes all happen
inside one ``io_submit``: on a kernel that switches tasks only on the way
back from a system call (``PREEMPT_NONE``, the benchmark machine's, or
``PREEMPT_LAZY`` for ordinary tasks), the woken client runs once the whole
batch is written and finds all of its answers ready together. On a kernel
that preempts inside system calls the client may run sooner; the writes
are the same writes either way.

How. ``io_submit`` with one ``IOCB_CMD_PWRITE`` per socket: a socket has no
asynchronous write, so the kernel does each write inside the call, with
the socket's own non-blocking rules (it takes what its send buffer has room
for, or fails with EAGAIN), and ``io_getevents`` collects the results. Each
socket's bytes are copied into a buffer of the sender's own first, so the
kernel never points into a Python object that could move or shrink. There
is no new dependency: the three system calls go through ``ctypes``.

Where it cannot be used (not Linux, an architecture whose system call
numbers are not listed here, ``io_setup`` refused because the machine's AIO
quota ``/proc/sys/fs/aio-max-nr`` is spent), :meth:`BatchSender.open`
returns None and the caller writes each socket itself.
"""

from __future__ import annotations

import ctypes
import platform
import struct
import sys

__all__ = ["BatchSender"]

# (io_setup, io_destroy, io_getevents, io_submit), by platform.machine().
_SYSCALLS = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),  # the generic table (asm-generic/unistd.h)
}

_IOCB = struct.Struct("=QIIHhIQQqQII")  # struct iocb (linux/aio_abi.h): 64 bytes
_EVENT_SIZE = 32  # struct io_event: data, obj, res, res2 (four 64-bit fields)
_IOCB_CMD_PWRITE = 1


class BatchSender:
    """Writes to many non-blocking sockets in one ``io_submit`` (see the module); one per thread that sends.

    Not thread-safe: one thread (or one loop) uses it at a time.
    """

    CAPACITY = 64
    """The most writes in one ``io_submit`` (more are sent in several)."""

    BUFFER = 128 * 1024
    """Bytes copied for one ``io_submit``; a socket's bytes that do not fit are left for the caller."""

    def __init__(self, syscall, numbers: tuple[int, int, int, int], context: ctypes.c_ulong) -> None:
        self._syscall = syscall
        _, self._destroy, self._getevents, self._submit = (ctypes.c_long(n) for n in numbers)
        self._context = context
        self._iocbs = ctypes.create_string_buffer(_IOCB.size * self.CAPACITY)
        base = ctypes.addressof(self._iocbs)
        self._pointers = (ctypes.c_void_p * self.CAPACITY)(*(base + _IOCB.size * i for i in range(self.CAPACITY)))
        self._events = ctypes.create_string_buffer(_EVENT_SIZE * self.CAPACITY)
        self._results = memoryview(self._events).cast("B").cast("q")  # [data, obj, res, res2] per event
        self._data = ctypes.create_string_buffer(self.BUFFER)
        self._data_view = memoryview(self._data).cast("B")
        self._data_address = ctypes.addressof(self._data)
        self._no_wait = (ctypes.c_long * 2)(0, 0)  # a zero timespec: collect what is done, do not wait
        self._order = list(range(self.CAPACITY))

    @classmethod
    def open(cls) -> BatchSender | None:
        """A sender, or None where this platform cannot batch writes (see the module)."""
        numbers = _SYSCALLS.get(platform.machine()) if sys.platform == "linux" else None
        if numbers is None:
            return None
        try:
            syscall = ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):
            return None
        syscall.restype = ctypes.c_long
        context = ctypes.c_ulong(0)
        if syscall(ctypes.c_long(numbers[0]), ctypes.c_long(cls.CAPACITY), ctypes.byref(context)) != 0:
            return None  # ENOSYS (seccomp, a kernel without AIO), EAGAIN (aio-max-nr spent)
        return cls(syscall, numbers, context)

    def close(self) -> None:
        """Give the kernel its AIO context back (once; the sender is unusable after)."""
        if self._context.value:
            self._syscall(self._destroy, self._context)
            self._context = ctypes.c_ulong(0)

    def send(self, items: list[tuple[int, bytearray]]) -> int:
        """Write each ``(fd, pending)``'s bytes to its socket; delete what each socket took from the front of ``pending``.

        What is not written stays in ``pending`` for the caller's own
        ``write``, which then sees the reason: a send buffer without room
        (EAGAIN), an error (a reset peer, a closed descriptor), bytes that
        did not fit in :attr:`BUFFER` with the others.

        Returns:
            the ``io_submit`` calls that wrote something (0 when closed, or
            when every socket is left to the caller).
        """
        if not self._context.value:
            return 0
        return sum(self._send_some(items[start : start + self.CAPACITY]) for start in range(0, len(items), self.CAPACITY))

    def _send_some(self, items: list[tuple[int, bytearray]]) -> bool:
        pack, iocbs, view, base = _IOCB.pack_into, self._iocbs, self._data_view, self._data_address
        sizes = []
        offset = 0
        for index, (fd, pending) in enumerate(items):
            size = len(pending)
            if offset + size > self.BUFFER:
                break
            view[offset : offset + size] = pending
            pack(iocbs, _IOCB.size * index, index, 0, 0, _IOCB_CMD_PWRITE, 0, fd, base + offset, size, 0, 0, 0, 0)
            sizes.append(size)
            offset += size
        count = len(sizes)
        if not count:
            return False
        submitted = self._syscall(self._submit, self._context, ctypes.c_long(count), self._pointers)
        if submitted <= 0:
            return False  # nothing submitted: every socket is the caller's to write
        done = self._syscall(self._getevents, self._context, ctypes.c_long(submitted), ctypes.c_long(submitted),
                             self._events, self._no_wait)  # fmt: skip
        if done != submitted:
            # Never seen (a socket's write is done inside io_submit), but the
            # buffer must not be reused while the kernel may still read it:
            # wait for every write, however long.
            done = max(done, 0)
            while done < submitted:
                more = self._syscall(self._getevents, self._context, ctypes.c_long(1),
                                     ctypes.c_long(submitted - done),
                                     ctypes.byref(self._events, _EVENT_SIZE * done), None)  # fmt: skip
                if more > 0:
                    done += more
        results = self._results
        if results[2 : 4 * done : 4].tolist() == sizes and results[0 : 4 * done : 4].tolist() == self._order[:done]:
            for _, pending in items[:done]:  # the usual case: every socket took all of its bytes
                pending.clear()
            return True
        for event in range(done):
            index, taken = results[4 * event], results[4 * event + 2]
            if taken > 0:
                del items[index][1][:taken]
        return True
