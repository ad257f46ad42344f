"""The mailbox that hands the llama.cpp engine thread's events to the event loop, one wake-up
per engine step."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable

from lokal.backends.llamacpp.jobs import Event

# libc's write() called with the GIL kept (PyDLL): see Mailbox.
_LIBC = ctypes.PyDLL(None)
_LIBC.write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
_LIBC.write.restype = ctypes.c_ssize_t


class Mailbox:
    """Hands engine events to the event loop with one wake-up per engine step instead of one
    per token: a step of 8 streams wakes the loop once, not 8 times.

    The engine thread posts a step's events as it samples them and calls `wake` right before
    its next llama_decode: one byte written to a pipe the loop watches, with the GIL kept.
    The loop wakes while the engine computes (llama_decode releases the GIL) and hands the
    events out then. Woken at a step's first event instead, the loop took the GIL at each
    later ctypes call of that step (each releases it) and streamed tokens out while the engine
    thread waited: 1.07 ms between decodes at 8 streams, now 0.30 ms. On 2 cores that CPU only
    moved into the decode (step period 27.96 vs 27.99 ms, alternated within one process), but
    the engine thread no longer depends on how busy the loop is. A write that released the
    GIL (os.write, call_soon_threadsafe) let the loop take it at the write itself; a thread of
    its own to make that write cost a second wake-up per step (0.07 ms CPU per token).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Event], Event]] = []
        self._closed = loop.is_closed()
        self._signalled = False  # a wake-up byte is on its way for the posted events
        self._read_fd = self._write_fd = -1
        if not self._closed:  # created on the loop's own thread (generate)
            self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            loop.add_reader(self._read_fd, self._woken)

    def post(self, queue: asyncio.Queue[Event], event: Event) -> None:
        """Queue `event` for `queue`; it reaches the loop at the next `wake`."""
        with self._lock:
            self._items.append((queue, event))
            if self._closed:  # the pipe is gone: drain from here, in order
                self._schedule_drain()

    def wake(self) -> None:
        """Have the loop hand out what was posted (the engine thread, before it computes)."""
        with self._lock:
            if self._items and not self._signalled and not self._closed:
                self._signalled = True  # under the lock: close() cannot close the pipe
                _LIBC.write(self._write_fd, b"\0", 1)  # a full pipe is as good a wake-up

    def close(self) -> None:
        """Stops watching the pipe, once what was posted before is handed over (stop() posts
        each running request's final error, then closes the mailbox)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._shut()
        elif not self._schedule_drain(then=self._shut):  # the loop is closed: no listener
            self._close_pipe()

    def _woken(self) -> None:
        try:
            os.read(self._read_fd, 4096)
        except BlockingIOError:
            pass
        self._drain()

    def _schedule_drain(self, then: Callable[[], None] | None = None) -> bool:
        def drain() -> None:
            self._drain()
            if then is not None:
                then()

        try:
            self.loop.call_soon_threadsafe(drain)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def _shut(self) -> None:
        self._drain()
        self.loop.remove_reader(self._read_fd)
        self._close_pipe()

    def _close_pipe(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            os.close(fd)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._signalled = False
        for queue, event in items:
            queue.put_nowait(event)
