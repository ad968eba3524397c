"""Background durability for a tracking session: results and memory written off the tracking thread.

A propagation asks for a flush every 32 frames or 2 s. Writing masks and memory
to zarr took ~12 % of a GPU propagation's time on the tracking thread (1.6 s of
13.5 s for 292 frames at 1024 px); here one background thread does it while
tracking continues. Order is what makes a crash safe: the results to write are
taken first, then the memory, the memory is written, then the results, so a
frame that reads as computed always has its memory on disk (the session queues
a frame's memory before its results). A failed write is queued again and its
error raised to the tracking thread at the next request or flush.
"""
from __future__ import annotations

import logging
import threading
import time

from samtrack.errors import CacheError
from samtrack.session.devices import serial_torch_in_this_thread

log = logging.getLogger(__name__)


def flush_now(results, bank) -> None:
    """Write what both stores hold, in the crash-safe order."""
    with results.flush_lock, bank.flush_lock:
        rs = results.snapshot()
        bs = bank.snapshot()
        try:
            bank.write_snapshot(bs)
        except BaseException:
            results.requeue(rs)  # its memory is not on disk: the results must not be either
            raise
        results.write_snapshot(rs)


class Flusher:
    """One thread that runs :func:`flush_now` when asked; at most one flush queued behind the running one."""

    def __init__(self, results, bank):
        self._results, self._bank = results, bank
        self._cv = threading.Condition()
        self._wanted = False
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._since, self._last = 0, time.monotonic()  # frames and time since the last request

    def tick(self, every_frames: int = 32, every_s: float = 2.0) -> None:
        """One more frame stored: ask for a flush when ``every_frames`` frames or ``every_s`` seconds passed."""
        self._since += 1
        if self._since >= every_frames or time.monotonic() - self._last >= every_s:
            self.request()
            self._since, self._last = 0, time.monotonic()

    def request(self) -> None:
        """Ask for a flush in the background; raises the error of a failed earlier one."""
        with self._cv:
            self._raise_error()
            self._wanted = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="samtrack-session-flush", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wait(self) -> None:
        """Until no background flush is running or asked for; raises a failed one's error."""
        with self._cv:
            while (self._wanted or self._busy) and self._thread is not None and self._thread.is_alive():
                self._cv.wait(timeout=0.5)
            self._raise_error()

    def close(self, timeout: float = 600.0) -> None:
        """Stop the thread after the flush it runs; raises the error of a failed flush, and a
        :class:`CacheError` when the thread is still writing after ``timeout`` seconds (a hung disk)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                raise CacheError(f"the background writer is still writing after {timeout:.0f} s (a slow or hung "
                                 "disk?); results it had not written are not on disk")
        with self._cv:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise CacheError(f"writing results to disk failed: {e}; they are kept in memory and "
                             "written at the next flush (free disk space, then save or propagate again)") from e

    def _run(self) -> None:
        serial_torch_in_this_thread()  # memory entries' copies: no OpenMP team that slows tracking
        while True:
            with self._cv:
                while not self._wanted and not self._closed:
                    self._cv.wait(timeout=1.0)
                if not self._wanted:
                    return
                self._wanted, self._busy = False, True
            try:
                flush_now(self._results, self._bank)
            except BaseException as e:  # kept for the tracking thread; nothing is lost
                log.warning("background flush failed: %s", e)
                with self._cv:
                    self._error = e
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
