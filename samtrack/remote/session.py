"""A session on a ``samtrack serve`` server, with the methods of a local one
(:class:`samtrack.session.protocol.Session`): made by :meth:`samtrack.remote.client.Client.open_session`.

Results are read from the server and cached here (:class:`RemoteResults`) until the next change (a prompt,
an object added or removed, a propagated frame); display frames come as PNG images, a few kept
(:class:`RemoteFrames`). ``propagate`` streams the server's frames (NDJSON) and resumes by itself after a
lost connection or a server restart: it reopens the session from its folder and asks again for the same
range with ``replay`` and ``skip``, so each frame of the range is yielded once (that part:
:mod:`samtrack.remote.propagation`).
"""
from __future__ import annotations

import collections
import json
import logging
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

from samtrack.errors import (FrameIndexError, PromptError, ServerUnavailableError, SessionBusyError, SessionClosedError,
                             UnknownObjectError)
from samtrack.remote import wire
from samtrack.remote._http import jsonable
from samtrack.remote.propagation import RemotePropagation, _match
from samtrack.remote.views import (RemoteBackend, RemoteFrames, RemoteResults, RemoteVideoInfo, model_spec,
                                   unzip_export)
from samtrack.session.finding import MATCH_IOU, FoundObjects
from samtrack.session.prompts import Concept, Everything, make_concept, make_mask, prompt_from_record, prompt_record
from samtrack.session.types import FrameResult

log = logging.getLogger(__name__)

LABEL_CACHE = 16  # label images kept


class RemoteSession(RemotePropagation):
    """A tracking session on a server (see the module doc). Not thread-safe except :meth:`cancel` and the
    reads of ``frames`` and ``results``; a context manager.

    ``id``: the server's session id; ``workdir``: its folder on the server; ``frames``, ``results``,
    ``backend``: as a local session's (read over the network)."""

    def __init__(self, http, request: dict, state: dict):
        self._http = http
        self._open_body = request  # the POST /v1/sessions body that reopens it (never with reset)
        self._lock = threading.RLock()
        self._gen = 0  # cache generation: bumped by every change
        self._cache: dict = {}
        self._labels: collections.OrderedDict = collections.OrderedDict()
        self._state: dict | None = None
        self._cancel = threading.Event()
        self._abandoned = -math.inf  # when a propagation stream of ours was closed early (the server cancels it)
        self._live_streams = 0  # propagation streams of this client open now (propagation.py), under _lock
        self._closed = False
        self._set_state(state)
        info = state["info"]
        self.id: str = state["id"]
        self.n_frames, self.height, self.width = int(info["n_frames"]), int(info["height"]), int(info["width"])
        self.workdir = Path(state["workdir"])
        self.frames = RemoteFrames(self, RemoteVideoInfo(
            self.n_frames, self.height, self.width, info.get("fps"), str(info.get("dtype", "uint8")),
            str(info.get("source") or state.get("video"))))
        self.results = RemoteResults(self)
        self.backend = RemoteBackend(model_spec(state.get("model")), str(state.get("model")),
                                     state.get("checkpoint", request.get("checkpoint")), state.get("device"),
                                     state.get("image_size"))

    # -- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        """A request on this session's URL. An unknown session (the server restarted, or closed it) is
        opened again from its folder and the request sent once more; a busy answer caused by a stream we
        abandoned is waited out."""
        self._check_open()
        reopened, started = False, time.monotonic()
        while True:
            try:
                return self._http.request(method, f"/v1/sessions/{self.id}{path}", **kw)
            except SessionClosedError:
                if reopened:
                    raise
                self._reopen()
                reopened = True
            except SessionBusyError:
                if not self._wait_out_busy(started):
                    raise

    def _json(self, method: str, path: str, **kw) -> dict:
        r = self._request(method, path, **kw)
        try:
            return r.json()
        except ValueError as e:
            raise wire.WireError(f"the server's answer to {method} {path} is not JSON: {r.text[:200]!r}") from e

    def _reopen(self, *, retry: bool = True) -> None:
        """POST /v1/sessions with the opening arguments: the server reopens the session from its folder."""
        state = self._http.json("POST", "/v1/sessions", json=self._open_body, idempotent=True, retry=retry)
        if state["id"] != self.id:
            log.warning("the server reopened session %s as %s", self.id, state["id"])
            self.id = state["id"]
        log.info("session %s reopened on %s from %s", self.id, self._http.url, state.get("workdir"))
        self._changed(state)

    def _changed(self, state: dict | None = None) -> None:
        """Forget every cached read (and take ``state`` when the server sent it)."""
        with self._lock:
            self._gen += 1
            self._cache.clear()
            self._labels.clear()
            self._state = None
            if state is not None:
                self._set_state(state)

    def _set_state(self, state: dict) -> None:
        with self._lock:
            self._state = state

    def _cached(self, key, fetch):
        with self._lock:
            store = self._labels if key[0] == "labels" else self._cache
            if key in store:
                return store[key]
            gen = self._gen
        value = fetch()
        with self._lock:
            if gen == self._gen:  # not changed meanwhile
                store[key] = value
                if store is self._labels and len(store) > LABEL_CACHE:
                    store.popitem(last=False)
        return value

    def state(self) -> dict:
        """The server's session state (``id``, ``video``, ``workdir``, ``model``, ``info``, ``obj_ids``,
        ``objects``, ``concepts``, ``propagating``, ``queued``), cached until the next change."""
        with self._lock:
            if self._state is not None:
                return self._state
            gen = self._gen
        st = self._json("GET", "")
        with self._lock:
            if gen == self._gen:
                self._state = st
        return st

    def _object(self, obj_id) -> dict:
        meta = self.state()["objects"].get(str(obj_id)) if isinstance(obj_id, (int, np.integer)) else None
        if meta is None:
            raise UnknownObjectError(f"unknown object {obj_id}; objects are {self.obj_ids or 'none yet'}")
        return meta

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"the remote session {self.id} ({self.workdir} on {self._http.url}) is closed: "
                                     "open it again with client.open_session(...) to go on (everything is saved "
                                     "there)")

    def _check_frame(self, frame) -> int:
        """An integer frame index (its range is the server's check, with the local message); another type
        raises :class:`FrameIndexError` here, as the local session does."""
        self._check_open()
        if not isinstance(frame, (int, np.integer)) or isinstance(frame, bool):
            raise FrameIndexError(f"frame {frame!r} is out of range: the video has {self.n_frames} frames "
                                  f"(0..{self.n_frames - 1})")
        return int(frame)

    def _result(self, d: dict) -> FrameResult:
        return wire.decode_result(d, self.height, self.width)

    # -- objects -------------------------------------------------------------------------------
    @property
    def obj_ids(self) -> list[int]:
        """The session's object ids, ascending (from the cached session state)."""
        return sorted(int(o) for o in self.state()["obj_ids"])

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (the session itself stays on the server, in its folder)."""
        return self._closed

    def add_object(self, obj_id: int, *, name: str | None = None, parent: int | None = None, color=None) -> None:
        """Add ``obj_id`` (1 .. 2**31 - 1) or change its name, parent or colour ((r, g, b) 0..255)."""
        self._changed(self._json("POST", "/objects", json=jsonable(
            {"obj_id": obj_id, "name": name, "parent": parent, "color": color})))

    def remove_object(self, obj_id: int) -> None:
        """Remove an object, its prompts and results; :class:`UnknownObjectError` if there is none."""
        self._object(obj_id)
        self._changed(self._json("DELETE", f"/objects/{int(obj_id)}"))

    def keyframes(self, obj_id: int) -> list[int]:
        """The frames ``obj_id`` is prompted on, ascending."""
        return sorted(int(f) for f in self._object(obj_id).get("keyframes", []))

    def prompt_at(self, frame: int, obj_id: int):
        """The prompt of ``obj_id`` on ``frame`` (:class:`~samtrack.session.prompts.Points`, with an optional
        box, or :class:`~samtrack.session.prompts.Mask`), or None."""
        frame = self._check_frame(frame)
        self._object(obj_id)

        def get():  # the prompt from the server (cached until the next change)
            d = self._json("GET", f"/prompts/{int(obj_id)}/{frame}")
            if d.get("prompt") is None:
                return None
            mask = wire.decode_masks([d["mask"]], self.height, self.width)[0] if d.get("mask") else None
            return prompt_from_record(d["prompt"], mask)

        return self._cached(("prompt", frame, int(obj_id)), get)

    def status(self, obj_id: int) -> np.ndarray:
        """(N,) uint8 per frame: 0 not run, 1 propagated, 2 prompted, 3 stale (see :class:`Status`)."""
        return self.results.status(obj_id)

    @property
    def concepts(self) -> list:
        """The object-creating prompts of this job, as (frame, query), in the order they were given."""
        return [(int(f), prompt_from_record(rec)) for f, rec in self.state().get("concepts", [])]

    # -- prompts -------------------------------------------------------------------------------
    def _prompt(self, body: dict) -> FrameResult:
        try:
            return self._result(self._json("POST", "/prompts", json=jsonable(body)))
        finally:
            self._changed()

    def add_points(self, frame: int, obj_id: int, points, labels, *, clear: bool = True) -> FrameResult:
        """Clicks on ``frame`` for ``obj_id``: points (N, 2) as (x, y) video pixels, labels 1/0; ``clear=False``
        adds to the clicks already there. Returns the masks of every object on the frame
        (logits are +/-1: ask :meth:`frame_result` with ``logits=True`` for the values)."""
        return self._prompt({"kind": "points", "frame": self._check_frame(frame), "obj_id": obj_id,
                             "points": points, "labels": labels, "clear": bool(clear)})

    def add_box(self, frame: int, obj_id: int, box, *, points=None, labels=None) -> FrameResult:
        """A box (x0, y0, x1, y1) in video pixels, optionally with refining points (clipped to the frame)."""
        return self._prompt({"kind": "box", "frame": self._check_frame(frame), "obj_id": obj_id, "box": box,
                             "points": points, "labels": labels})

    def add_mask(self, frame: int, obj_id: int, mask, *, label=None) -> FrameResult:
        """A (H, W) mask at video resolution (bool, or a label image with ``label``; see
        :func:`~samtrack.session.prompts.make_mask`), sent as a COCO RLE."""
        frame = self._check_frame(frame)
        m = make_mask(mask, self.width, self.height, label=label).mask
        return self._prompt({"kind": "mask", "frame": frame, "obj_id": obj_id,
                             "mask": wire.encode_masks(m[None])[0]})

    def clear_prompts(self, frame: int, obj_id: int | None = None) -> None:
        """Remove the prompts on ``frame`` (of one object, or all); the frames they produced become stale."""
        self._changed(self._json("POST", "/clear", json={"frame": self._check_frame(frame),
                                                          "obj_id": None if obj_id is None else int(obj_id)}))

    def reset(self) -> None:
        """Forget every object, prompt and result on the server (the frame cache stays)."""
        self._changed(self._json("POST", "/reset"))

    # -- object-creating prompts -------------------------------------------------------------------
    def _find(self, frame: int, query, body: dict) -> FoundObjects:
        try:
            d = self._json("POST", "/find", json=jsonable({"frame": frame, **body}))
        finally:
            self._changed()
        matched = d.get("matched")
        if matched is None:
            matched = {o: math.nan for o in d.get("updated", [])}
        return FoundObjects(frame, query, created=[int(o) for o in d.get("created", [])],
                            matched={int(k): float("nan" if v is None else v) for k, v in matched.items()},
                            result=self._result(d["result"]) if d.get("result") else None)

    def add_text(self, frame: int, text: str, *, boxes=None, box_labels=None, threshold: float = 0.5,
                 match_iou: float = MATCH_IOU) -> FoundObjects:
        """Find every instance of ``text`` on ``frame`` (SAM3 models), as the local
        :meth:`~samtrack.session.session.TrackingSession.add_text`; ``detections`` stays empty (not sent)."""
        frame = self._check_frame(frame)
        q = make_concept(text, boxes, box_labels, width=self.width, height=self.height, threshold=threshold)
        return self._find(frame, q, {"kind": "text", "text": q.text, "boxes": q.boxes, "box_labels": q.box_labels,
                                     "threshold": q.threshold, **_match(match_iou)})

    def add_exemplars(self, frame: int, boxes, box_labels=None, *, text: str | None = None, threshold: float = 0.5,
                      match_iou: float = MATCH_IOU) -> FoundObjects:
        """Find every object like the positive exemplar boxes on ``frame`` (SAM3 models)."""
        frame = self._check_frame(frame)
        q = make_concept(text, boxes, box_labels, width=self.width, height=self.height, threshold=threshold)
        return self._find(frame, q, {"kind": "exemplars", "text": q.text, "boxes": q.boxes,
                                     "box_labels": q.box_labels, "threshold": q.threshold, **_match(match_iou)})

    def segment_everything(self, frame: int, *, threshold: float = 0.8, match_iou: float = MATCH_IOU,
                           **options) -> FoundObjects:
        """Every object on ``frame`` as a new object (SAM2's automatic mask generator)."""
        frame = self._check_frame(frame)
        q = Everything(float(threshold), tuple(sorted(options.items())))
        return self._find(frame, q, {"kind": "everything", "threshold": threshold, **_match(match_iou),
                                     **({"options": options} if options else {})})

    def find_objects(self, frame: int, query, *, match_iou: float = MATCH_IOU) -> FoundObjects:
        """Run an object-creating prompt (a :class:`~samtrack.session.prompts.Concept` or
        :class:`~samtrack.session.prompts.Everything`, as in a prompt file's ``"find"`` list or
        :attr:`concepts`) on ``frame`` and create objects for what is new there, as the local
        :meth:`~samtrack.session.finding.ObjectFinding.find_objects`. Raises :class:`PromptError` for
        another query type, and the local API's errors (a model family that cannot run this query, a frame
        out of range)."""
        if isinstance(query, Concept) and query.text:
            return self.add_text(frame, query.text, boxes=query.boxes or None, box_labels=query.box_labels or None,
                                 threshold=query.threshold, match_iou=match_iou)
        if isinstance(query, Concept):
            return self.add_exemplars(frame, query.boxes, query.box_labels, threshold=query.threshold,
                                      match_iou=match_iou)
        if isinstance(query, Everything):
            return self.segment_everything(frame, threshold=query.threshold, match_iou=match_iou,
                                           **dict(query.options))
        raise PromptError(f"query {query!r}: give a Concept (text or exemplar boxes) or Everything")

    def find_objects_created(self) -> set[int]:
        """Ids of the objects that object-creating prompts made (still present or not)."""
        return self._cached(("created",), lambda: {int(o) for o in self._json("GET", "/created")["obj_ids"]})

    def remove_find(self, frame: int, query) -> list[int]:
        """Forget an object-creating prompt given on ``frame`` and remove the objects it created; their ids."""
        rec, _ = prompt_record(query)
        try:
            return [int(o) for o in self._json("POST", "/remove_find", json=jsonable(
                {"frame": self._check_frame(frame), "query": rec}))["removed"]]
        finally:
            self._changed()

    # -- results -------------------------------------------------------------------------------
    def frame_result(self, frame: int, obj_ids=None, *, logits: bool = False) -> FrameResult:
        """Masks and scores of ``frame`` for ``obj_ids`` (default all). ``logits=True`` also brings the
        (n, H, W) float32 logits (4 bytes a pixel on the wire); otherwise they are +/-1 from the masks."""
        frame = self._check_frame(frame)
        params = {"logits": 1} if logits else {}
        if obj_ids is not None:
            params["obj_ids"] = ",".join(str(int(o)) for o in obj_ids)
        return self._result(self._json("GET", f"/frames/{frame}/result", params=params))

    def flush(self) -> None:
        """Make the server write everything computed to the session's folder."""
        self._request("POST", "/flush")

    # -- export and close ----------------------------------------------------------------------
    def export(self, fmt: str, output, *, force: bool = False, allow_incomplete: bool = False,
               progress: Callable[[int, int], None] | None = None, **options):
        """Export on the server as ``fmt`` and download it to ``output`` here (unpacked, moved into place
        whole); returns an :class:`~samtrack.io.export.ExportReport` whose ``path`` is ``output``.
        ``progress(bytes_done, bytes_total)`` counts the download; ``frames_dir`` (coco, ytvis): a folder here
        for the video's frames (the server writes them into the download). Raises
        :class:`~samtrack.io.export.ExportError` as the local export does (an existing ``output`` without
        ``force``, incomplete frames without ``allow_incomplete``, an unknown format)."""
        from samtrack.io.export import ExportError, ExportReport, atomic_output

        self._check_open()
        output = Path(output)
        if output.exists() and not force:  # before the server works (atomic_output checks again)
            raise ExportError(f"{output} exists: pass force=True to replace it")
        frames_dir = options.pop("frames_dir", None)
        if frames_dir is not None:
            options["write_frames"] = True
        body = jsonable({"format": fmt, "allow_incomplete": bool(allow_incomplete), "options": options})
        with tempfile.TemporaryFile() as zf:
            with self._stream_request("/export", body) as r:
                report = json.loads(r.headers.get("X-Samtrack-Export") or "{}")
                total, done = int(r.headers.get("Content-Length") or 0), 0
                for block in r.iter_bytes(1 << 20):
                    zf.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total or done)
            with atomic_output(output, force=force) as tmp:
                unzip_export(zf, str(report.get("name") or output.name), tmp,
                             None if frames_dir is None else Path(frames_dir))
        return ExportReport(output, str(report.get("format", fmt)), int(report.get("frames", self.n_frames)),
                            int(report.get("objects", len(self.obj_ids))),
                            {int(k): tuple(int(f) for f in v) for k, v in (report.get("hidden") or {}).items()},
                            tuple(str(w) for w in report.get("warnings") or ()))

    def close(self) -> None:
        """Flush and close the session on the server (its folder stays); idempotent. A server that cannot
        be reached is logged, not raised (it flushes on its own). A propagation stream of this client still
        open (a generator not run to its end) is cancelled first. Right after a propagation stream was left
        early or cancelled, waits (up to ``BUSY_WAIT`` s) for the server to stop it; raises
        :class:`~samtrack.errors.SessionBusyError` (the session then stays open) while a propagation of it
        this client did not stop still runs."""
        if self._closed:
            return
        if self._live_streams:  # a propagate() generator still open (a `with` block left while iterating)
            self.cancel()
        started = time.monotonic()
        try:
            while True:
                try:
                    self._http.request("DELETE", f"/v1/sessions/{self.id}", retry=False)
                    break
                except SessionBusyError:
                    if not self._wait_out_busy(started):
                        raise
                except (ServerUnavailableError, SessionClosedError) as e:
                    log.warning("closing remote session %s: %s", self.id, e)
                    break
        except SessionBusyError:
            raise  # still open on the server: close() may be called again
        except BaseException:
            self._mark_closed()
            raise
        self._mark_closed()

    def _mark_closed(self) -> None:
        self._closed = True
        self.frames.close()
        self._changed()

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteSession {self.id} {self.frames.source} on {self._http.url}>"
