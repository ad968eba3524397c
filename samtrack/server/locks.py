"""The server's locks: first come, first served, so a propagation that takes its device lock once per frame
cannot starve the prompts of other sessions, and queued propagations run in the order they asked."""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable


class FairLock:
    """A ticket lock: waiters get it in the order they asked (``threading.Lock`` lets the thread that just
    released it take it again first). Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> "FairLock":
        with self._cond:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._cond.wait()
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class Device:
    """One accelerator (or the CPU): ``lock`` is held for each model call (a prompt, one propagation
    frame), and :meth:`enter` / :meth:`leave` let one propagation at a time run on it, the others
    waiting in FIFO order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = FairLock()
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._running: object | None = None

    def enter(self, ticket: object, on_position: Callable[[int], None], stop: threading.Event) -> bool:
        """Wait until ``ticket`` may propagate. ``on_position(k)`` is called with the number of
        propagations ahead of it (the running one included) whenever that number changes while it
        waits. Returns False (and leaves the queue) when ``stop`` is set first."""
        with self._cond:
            self._waiting.append(ticket)
            last = None
            try:
                while True:
                    if self._running is None and self._waiting[0] is ticket:
                        self._waiting.popleft()
                        self._running = ticket
                        return True
                    if stop.is_set():
                        self._waiting.remove(ticket)
                        return False
                    ahead = self._waiting.index(ticket) + (self._running is not None)
                    if ahead != last:
                        last = ahead
                        on_position(ahead)
                    self._cond.wait(0.25)
            finally:
                self._cond.notify_all()

    def leave(self, ticket: object) -> None:
        with self._cond:
            if self._running is ticket:
                self._running = None
            self._cond.notify_all()

    @property
    def busy(self) -> bool:
        return self._running is not None
