"""The propagation side of :class:`~samtrack.remote.session.RemoteSession`: the NDJSON stream of
``POST /v1/sessions/{sid}/propagate`` (docs/remote.md "The propagation stream") read as a generator of
:class:`FrameResult`, resumed after a lost connection or a server restart (the session reopened from its
folder, the same range asked again with ``replay`` and ``skip``), and cancel.

After this client cancelled or left a stream early, the server stops that propagation after its frame in
flight; until then a change to the session gets 409 :class:`SessionBusyError`, which this client waits out
for up to ``BUSY_WAIT`` s (:meth:`RemotePropagation._wait_out_busy`).
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import httpx
import numpy as np

from samtrack.errors import (InvalidOptionError, SamtrackError, ServerUnavailableError, SessionBusyError,
                             SessionClosedError)
from samtrack.remote import wire
from samtrack.remote._http import Backoff
from samtrack.session.finding import MATCH_IOU
from samtrack.session.types import FrameResult

log = logging.getLogger(__name__)

BUSY_WAIT = 30.0  # s: how long a request waits for a propagation this client abandoned to wind down


class _Lost(Exception):
    """The propagation stream ended without its last line (connection lost)."""


class RemotePropagation:
    """Propagation methods of :class:`~samtrack.remote.session.RemoteSession` (a mixin: it uses the session's
    ``_http``, ``id``, ``n_frames``, ``_lock``, ``_cancel``, ``_abandoned``, ``_live_streams``, ``_closed``,
    ``_check_open``, ``_changed``, ``_result`` and ``_reopen``)."""

    def propagate(self, direction: str = "forward", start: int | None = None, stop: int | None = None, *,
                  obj_ids=None, progress: Callable[[int, int], None] | None = None, replay: bool = False,
                  skip=None, logits: bool = False,
                  on_event: Callable[[dict], None] | None = None) -> Iterator[FrameResult]:
        """Propagate on the server, as the local :meth:`~samtrack.session.session.TrackingSession.propagate`:
        a generator of one :class:`FrameResult` per frame the call finishes, each already stored there.

        ``replay``: also yield the frames of the range already computed for the objects; ``skip``: frame
        indices (or inclusive ``(a, b)`` ranges) not to yield. ``logits``: real logits on the wire.
        ``on_event(event dict)``: the stream's other lines (``queued`` with ``position``, ``started`` with
        ``total``, and the last one, ``done`` or ``cancelled``, with ``frames``).
        ``progress(done, total)`` counts frames over the whole call.

        A lost connection or a server restart is resumed for up to ``reconnect_timeout`` s (the session
        reopened from its folder, the request sent again with ``replay`` and ``skip`` = the frames already
        yielded): each frame of the range is yielded once, and after a resume every frame of the range is
        yielded (already computed ones too). Closing the generator early disconnects, which cancels the
        propagation on the server after the frame in flight. Raises the local API's errors
        (NoPromptsError, UnreachableFramesError, ...) and ServerUnavailableError when the server stays away."""
        body = {"direction": direction, "start": start, "stop": stop,
                "obj_ids": None if obj_ids is None else [int(o) for o in obj_ids], "logits": bool(logits)}
        return self._stream(body, _frame_set(skip, self.n_frames), replay, progress, on_event, resume=True)

    def propagate_and_redetect(self, every: int, direction: str = "both", start: int | None = None,
                               stop: int | None = None, *, match_iou: float = MATCH_IOU,
                               progress: Callable[[int, int], None] | None = None,
                               on_event: Callable[[dict], None] | None = None) -> Iterator[FrameResult]:
        """Propagate, then re-run the job's object-creating prompts every ``every`` frames, on the server (see
        the local :meth:`~samtrack.session.finding.ObjectFinding.propagate_and_redetect`). A frame can be
        yielded again with new objects; after a lost connection the request is sent again as it was (frames
        computed meanwhile are in the stores, not yielded)."""
        body = {"direction": direction, "start": start, "stop": stop, "obj_ids": None, "logits": False,
                "redetect_every": every, **_match(match_iou)}
        return self._stream(body, set(), False, progress, on_event, resume=False)

    def _stream(self, body: dict, skip: set, replay: bool, progress, on_event, *, resume: bool):
        self._check_open()
        self._cancel.clear()
        self._changed()
        with self._lock:
            self._live_streams += 1
        try:
            yield from self._stream_lines(body, skip, replay, progress, on_event, resume=resume)
        finally:
            with self._lock:
                self._live_streams -= 1

    def _stream_lines(self, body: dict, skip: set, replay: bool, progress, on_event, *, resume: bool):
        got: set[int] = set()  # frames yielded by this call
        before = 0  # frames yielded before the current request
        backoff = None
        while True:
            sent = {**body, "replay": replay, "skip": _ranges(skip | got)}
            try:
                with self._stream_request("/propagate", sent) as r:
                    if backoff is not None:
                        log.info("propagation of session %s resumed after %d frames", self.id, len(got))
                    backoff = None
                    before = len(got)
                    for line in r.iter_lines():
                        if not line.strip():
                            continue
                        msg = json.loads(line)
                        ev = msg.get("event")
                        if ev == "frame":
                            res = self._result(msg["result"])
                            self._changed()
                            if resume and res.frame_idx in got:
                                continue  # sent twice (never expected): yielded once
                            got.add(res.frame_idx)
                            yield res
                            if progress:
                                progress(len(got), before + int(msg.get("total", 0)))
                        elif ev in ("done", "cancelled"):
                            log.info("propagation of session %s %s: %d frames", self.id, ev, len(got))
                            if on_event:
                                on_event(msg)
                            return
                        elif ev == "error":
                            wire.raise_error(msg, None)
                        elif ev == "alive":  # the server's heartbeat during a slow frame or a wait
                            continue
                        else:
                            log.info("propagation of session %s: %s", self.id, msg)
                            if on_event:
                                on_event(msg)
                    raise _Lost("the stream ended without its last line")
            except GeneratorExit:
                self._abandoned = time.monotonic()
                raise
            except (httpx.TransportError, _Lost, ServerUnavailableError) as e:
                if self._cancel.is_set() or self._closed:
                    return
                backoff = backoff or Backoff(self._http.reconnect_timeout)
                log.warning("propagation stream of session %s lost after %d frames (%s); resuming", self.id,
                            len(got), e)
                if not backoff.wait(e):
                    raise ServerUnavailableError(
                        f"lost the samtrack server at {self._http.url} during a propagation and could not resume "
                        f"it within {self._http.reconnect_timeout:.0f} s ({type(e).__name__}: {e}); every frame "
                        "finished is stored there: propagate again once it is back") from e
                try:
                    self._reopen(retry=False)
                except ServerUnavailableError:
                    pass  # still away: the next try waits again
                if resume:
                    replay = True
            finally:
                self._changed()

    @contextmanager
    def _stream_request(self, path: str, body: dict) -> Iterator[httpx.Response]:
        """A streamed POST on this session: an unknown session is reopened once; a busy answer caused by a
        stream this client abandoned (its cancel winds down on the server) is waited out."""
        reopened, started = False, time.monotonic()
        while True:
            self._check_open()
            stack = ExitStack()
            try:
                r = stack.enter_context(self._http.stream("POST", f"/v1/sessions/{self.id}{path}", json=body))
            except SessionClosedError:
                if reopened:
                    raise
                self._reopen()
                reopened = True
                continue
            except SessionBusyError:
                if not self._wait_out_busy(started):
                    raise
                continue
            with stack:
                yield r
            return

    def cancel(self) -> None:
        """Stop a running :meth:`propagate` after the frame in flight (callable from any thread); the
        stream then ends. Everything computed is kept. When a stream of this client was running, a change
        sent right after (a prompt, an export, close) waits for the propagation to wind down (up to
        ``BUSY_WAIT`` s) instead of failing with :class:`~samtrack.errors.SessionBusyError`; with none, a
        busy answer (another client's propagation) is raised at once."""
        self._cancel.set()
        if self._live_streams:  # the server winds a stream of ours down: a change sent now waits for it
            self._abandoned = time.monotonic()
        if self._closed:
            return
        try:
            self._http.request("POST", f"/v1/sessions/{self.id}/cancel", retry=False)
        except SamtrackError as e:  # the stream's end (or its loss) stops the generator anyway
            log.warning("cancel of session %s: %s", self.id, e)

    def _wait_out_busy(self, started: float) -> bool:
        """After a busy answer (409) to a request first sent at ``started`` (``time.monotonic()``): True, after
        a short sleep, when it is worth sending again because this client abandoned or cancelled a stream
        less than ``BUSY_WAIT`` s ago (the server is winding it down) and the request has waited less than
        that; False when the busy answer is to be raised (another client's propagation, or waited enough)."""
        now = time.monotonic()
        if now - self._abandoned > BUSY_WAIT or now - started > BUSY_WAIT:
            return False
        time.sleep(0.1)
        return True


def _match(match_iou: float) -> dict:
    """Protocol 1 has no ``match_iou``: the server uses the local default; another value is refused here."""
    if match_iou != MATCH_IOU:
        raise InvalidOptionError(f"match_iou={match_iou}: a remote session matches detections with the default "
                                 f"{MATCH_IOU} (protocol 1 does not send another); leave it out")
    return {}


def _frame_set(skip, n: int) -> set[int]:
    """Frame indices from ints and inclusive (a, b) ranges."""
    out: set[int] = set()
    for s in skip or ():
        if isinstance(s, (int, np.integer)):
            out.add(int(s))
        else:
            a, b = s
            out.update(range(int(a), int(b) + 1))
    return {f for f in out if 0 <= f < n}


def _ranges(frames: set[int]) -> list[list[int]]:
    """Sorted frames as inclusive [a, b] ranges (what ``skip`` takes)."""
    out: list[list[int]] = []
    for f in sorted(frames):
        if out and f == out[-1][1] + 1:
            out[-1][1] = f
        else:
            out.append([f, f])
    return out
