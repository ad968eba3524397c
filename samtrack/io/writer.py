"""A background writer: per-frame chunk writes overlap with model compute.

Tasks run in submission order on one thread (one writer per chunk holds).
:meth:`drain` waits until everything submitted is written; an error in the
thread is raised at the next :meth:`submit` or :meth:`drain`, never lost.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable


class BackgroundWriter:
    def __init__(self, name: str = "samtrack-writer", max_pending: int = 64):
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._pending: dict = {}  # key -> count of queued writes
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args, key=None) -> None:
        self._raise()
        if key is not None:
            with self._lock:
                self._pending[key] = self._pending.get(key, 0) + 1
        self._q.put((fn, args, key))

    def pending(self, key) -> bool:
        with self._lock:
            return self._pending.get(key, 0) > 0

    def drain(self) -> None:
        self._q.join()
        self._raise()

    def close(self) -> None:
        self.drain()
        self._q.put(None)
        self._thread.join(timeout=30)

    def _raise(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                self._q.task_done()
                return
            fn, args, key = item
            try:
                fn(*args)
            except BaseException as e:  # surfaced at the next submit/drain
                self._error = e
            finally:
                if key is not None:
                    with self._lock:
                        self._pending[key] -= 1
                self._q.task_done()
