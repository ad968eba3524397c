"""The propagation stream (``POST /v1/sessions/{sid}/propagate``, docs/remote.md "The propagation stream").

A :class:`PropagationJob` runs the session's propagation in a worker thread and hands one event per line
to the response through an asyncio queue. The worker waits for its device (FIFO, saying ``queued``), then
replays the frames already computed (when asked), then propagates, taking the session's lock and the
device's lock for each frame only, so other sessions' prompts and this session's reads run between
frames. The response side cancels the job when the client goes away or the stream ends any other way;
the propagation then stops after the frame in flight, with everything computed kept.

An error before the first line is raised to the route (an HTTP error status); after it, it is the last
line (``{"event": "error"}``). The last line is sent only after the job has given the session and the
device back, so a client's next request after reading it is never refused as busy.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import AsyncIterator

import numpy as np

from samtrack.errors import InvalidOptionError
from samtrack.remote.wire import encode_result, error_body
from samtrack.server.manager import Served

log = logging.getLogger(__name__)
_END = ("done", "cancelled", "error")
# seconds without a line before an {"event": "alive"} line: lets a client tell a slow frame from a dead
# connection (its read timeout, remote._http.STREAM_READ_TIMEOUT, is many of these)
HEARTBEAT_S = 10.0


def skip_set(skip, n_frames: int) -> set[int]:
    """Frames named by inclusive ``[[a, b], ...]`` ranges (clipped to the video)."""
    out: set[int] = set()
    for r in skip or ():
        if not isinstance(r, (list, tuple)) or len(r) != 2:
            raise InvalidOptionError(f"skip: {r!r} is not a range [first, last]; give [[a, b], ...] (inclusive)")
        a, b = sorted(int(x) for x in r)
        out.update(range(max(a, 0), min(b, n_frames - 1) + 1))
    return out


class PropagationJob:
    """One propagation request of one session. ``body``: the validated request (direction, start, stop,
    obj_ids, redetect_every, replay, skip, logits)."""

    def __init__(self, served: Served, body, loop: asyncio.AbstractEventLoop):
        self.served = served
        self.body = body
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()
        self.sent = 0  # frame lines sent
        self.lines_out = 0  # any lines put on the queue
        self._gen = None
        self.request = None  # the HTTP request it answers (to see whether its client is still there)
        self._thread = threading.Thread(target=self._run, name=f"samtrack-propagate-{served.sid}", daemon=True)

    # -- the asyncio side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    async def first(self) -> dict:
        """The first line; an exception raised before it is raised here (for an HTTP error status)."""
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def lines(self, request, first: dict) -> AsyncIterator[str]:
        """NDJSON lines, from ``first`` to the last event; cancels the job on any exit (disconnect)."""
        try:
            item = first
            while True:
                if isinstance(item, BaseException):  # cannot happen after the first line; be safe
                    item = {"event": "error", "error": error_body(item)["error"]}
                yield json.dumps(item, separators=(",", ":")) + "\n"
                if item.get("event") in _END:
                    return
                if await request.is_disconnected():
                    log.info("client left the stream of session %s: cancelling", self.served.sid)
                    return
                item, quiet = None, 0.0
                while item is None:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                    except asyncio.TimeoutError:
                        quiet += 0.5
                    if item is None and await request.is_disconnected():
                        log.info("client left the stream of session %s: cancelling", self.served.sid)
                        return
                    if item is None and quiet >= HEARTBEAT_S:  # a slow frame or a long queue: say we are here
                        quiet = 0.0
                        yield '{"event":"alive"}\n'
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop after the frame in flight (or leave the device queue); callable from any thread. The session's
        propagation is cancelled only while this job still holds the session: once it has given it back (its
        last line is sent after that, and the stream's end calls this), a newer job may be propagating it."""
        self.stop.set()
        with self.served.owner_lock:  # not between this check and a newer job's claim
            if self.served.propagation is self:
                self.served.session.cancel()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the worker thread --------------------------------------------------------------------------------------
    def _emit(self, item) -> None:
        self.lines_out += 1
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _run(self) -> None:
        served, dev = self.served, self.served.device
        entered = False
        end = None  # the last line (or an exception before the first): sent after the session is given back
        try:
            def queued(k: int) -> None:
                served.queued = True
                self._emit({"event": "queued", "position": k})

            entered = dev.enter(self, queued, self.stop)
            served.queued = False
            if not entered:
                end = {"event": "cancelled", "frames": 0}
                return
            end = self._propagate()
        except BaseException as e:  # noqa: BLE001  (reported to the client, the server goes on)
            if not isinstance(e, Exception) or not getattr(e, "__module__", "").startswith("samtrack"):
                log.exception("propagation of session %s failed", served.sid)
            end = self._failure(e)
        finally:
            try:
                if self._gen is not None:
                    self._close_gen()
            except Exception as e:  # noqa: BLE001  (storing the frame in flight failed: say so, not "done")
                log.exception("closing the propagation of session %s failed", served.sid)
                end = self._failure(e)
            finally:
                # give the session and the device back *before* the last line: a client that reads "done"
                # and at once prompts, exports or closes must not be told the session is still propagating
                if entered:
                    dev.leave(self)
                served.queued = False
                with served.owner_lock:
                    served.propagation = None
                self.served_release()
                if end is not None:
                    self._emit(end)

    def _failure(self, e: BaseException):
        """What a failure ends the stream with: the exception itself before the first line (the route raises
        it: an HTTP error status), else an ``error`` line."""
        return e if self.lines_out == 0 else {"event": "error", "error": error_body(e)["error"]}

    def served_release(self) -> None:  # replaced by the route: give the session back to the manager
        pass

    def _propagate(self) -> dict:
        """Run the propagation, emitting ``started`` and the frame lines; return the last event (not sent)."""
        s, b, served = self.served.session, self.body, self.served
        with served.lock:
            plan = s.plan(b.direction if b.direction in ("forward", "backward", "both") else "forward",
                          b.start, b.stop, obj_ids=b.obj_ids)
            lo = 0 if b.start is None else int(b.start)
            hi = s.n_frames - 1 if b.stop is None else int(b.stop)
            lo, hi = min(lo, hi), max(lo, hi)
            skip = skip_set(b.skip, s.n_frames)
            coming = {f for (_, f) in plan.yields}
            ids = list(b.obj_ids) if b.obj_ids is not None else s.obj_ids
            replay = self._replay_frames(s, ids, lo, hi, coming | skip) if b.replay else []
        total = len(replay) + len(coming - skip)
        started = False

        def send(res) -> None:
            nonlocal started, total
            if not started:
                started = True
                self._emit({"event": "started", "total": total})
            self.sent += 1
            total = max(total, self.sent)
            self._emit({"event": "frame", "done": self.sent, "total": total,
                        "result": encode_result(res, logits=bool(b.logits))})

        for f in replay:
            if self.stop.is_set():
                break
            with served.lock, served.device.lock:
                res = s.frame_result(f, ids)
            send(res)
        if not self.stop.is_set():
            if b.redetect_every is not None:
                self._gen = s.propagate_and_redetect(b.redetect_every, b.direction, b.start, b.stop)
            else:
                self._gen = s.propagate(b.direction, b.start, b.stop, obj_ids=b.obj_ids)
            while not self.stop.is_set():
                with served.lock, served.device.lock:
                    res = next(self._gen, None)
                if res is None:
                    self._gen = None  # finished
                    break
                if res.frame_idx in skip and b.redetect_every is None:
                    continue
                send(res)
            if self._gen is not None:  # stopped early: store the frame in flight before saying so
                self._close_gen()
                log.info("propagation of session %s cancelled after %d frames sent", served.sid, self.sent)
        if not started:
            self._emit({"event": "started", "total": total})
        return {"event": "cancelled" if self.stop.is_set() else "done", "frames": self.sent}

    def _close_gen(self) -> None:
        """Close a propagation that was stopped early: the frame in flight is stored, then flushed."""
        gen, self._gen = self._gen, None
        with self.served.lock, self.served.device.lock:
            gen.close()

    @staticmethod
    def _replay_frames(s, ids, lo: int, hi: int, leave: set[int]) -> list[int]:
        """Frames of ``lo..hi`` already computed (propagated or prompted) for one of ``ids``, minus ``leave``."""
        from samtrack.io.result_store import Status

        if not ids:
            return []
        st = np.stack([s.results.status(o)[lo:hi + 1] for o in ids])
        done = ((st == Status.PROPAGATED) | (st == Status.PROMPTED)).any(axis=0)
        return [lo + i for i in np.flatnonzero(done).tolist() if lo + i not in leave]
