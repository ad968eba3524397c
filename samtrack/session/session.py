"""TrackingSession: objects, keyframe prompts, propagation and corrections.

Conventions: frames are 0-based indices in decode order; points are (x, y)
in video pixels with labels 1 (positive) / 0 (negative); boxes are (x0, y0,
x1, y1); masks are (H, W) bool at video resolution. Results carry ``masks``
(n, H, W) bool and ``logits`` (n, H, W) float32 at video resolution.

Invariant: every prompted frame is a keyframe of its object and is never
recomputed by a propagation; every computed frame records the keyframe whose
pass produced it (see :mod:`samtrack.session.planner`).
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from samtrack.errors import (FrameIndexError, OutOfMemoryError, PromptError, SessionClosedError,
                             UnknownObjectError)
from samtrack.io.feature_store import FeatureStore
from samtrack.io.folder_lock import FolderLock
from samtrack.io.frame_store import FrameStore
from samtrack.io.model_input import MODEL_INPUT_VERSION
from samtrack.io.result_store import ResultStore, Status
from samtrack.memory.bank import MemoryBank
from samtrack.session.backends.base import MemoryEntry
from samtrack.session.devices import releases_openmp_team
from samtrack.session.flusher import Flusher, flush_now
from samtrack.session.job_identity import check_job, sign_job
from samtrack.session.features import FeatureSource
from samtrack.session.finding import FoundObjects, ObjectFinding  # noqa: F401  (FoundObjects re-exported)
from samtrack.session.propagation import Propagation
from samtrack.session.planner import Track, frames_to_recompute, stale_frames
from samtrack.session.prompts import (Mask, Points, make_mask, make_points, prompt_from_record, prompt_record,
                                      to_model_points)
from samtrack.session.types import FrameResult, SessionConfig  # re-exported

log = logging.getLogger(__name__)


@dataclass
class _Object:
    obj_id: int
    prompts: dict[int, Points | Mask] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)  # prompted, memory not encoded yet
    # finalized keyframe outputs replaced by a pending re-prompt of the same frame: what a prompt step still
    # reads as that frame's conditioning memory until the next propagation encodes the new one (upstream keeps
    # the consolidated output in cond_frame_outputs and writes re-prompts to its temporary dict)
    held: dict[int, MemoryEntry] = field(default_factory=dict)
    visited: np.ndarray | None = None  # int8 per frame: -1 never tracked, 0 forward, 1 backward

    @property
    def keyframes(self) -> list[int]:
        """Frames (0-based, ascending) that hold a prompt of this object."""
        return sorted(self.prompts)

    def finalized_keyframes(self) -> list[int]:
        """Keyframes whose memory a propagation has encoded (not re-prompted since): ascending."""
        return sorted(set(self.prompts) - self.pending)


class TrackingSession(ObjectFinding, Propagation, FeatureSource):
    """Prompt keyframes, propagate, correct, re-propagate. Not thread-safe except :meth:`cancel`."""

    def __init__(self, frames: FrameStore, backend, *, workdir: str | Path, config: SessionConfig | None = None,
                 signature: dict | None = None, reset: bool = False, folder_lock: FolderLock | None = None):
        """``folder_lock``: the workdir's lock, already held (:func:`~samtrack.session.open_session` takes it
        before loading a model); None: taken here. Raises :class:`~samtrack.errors.SessionInUseError` when
        another session holds the workdir (one writer per folder: :mod:`samtrack.io.folder_lock`), and
        :class:`~samtrack.errors.InvalidOptionError` for a ``folder_lock`` not held or of another folder."""
        self._folder_lock = folder_lock if folder_lock is not None else FolderLock(workdir).acquire()
        try:
            self._folder_lock.check_guards(workdir)
            self._open(frames, backend, workdir, config, signature, reset)
        except BaseException:
            self._folder_lock.release()
            raise

    def _open(self, frames: FrameStore, backend, workdir, config: SessionConfig | None, signature: dict | None,
              reset: bool) -> None:
        self.frames = frames
        self.backend = backend
        self.config = config or SessionConfig()
        if hasattr(backend, "cuda_graphs"):  # the family can replay its tracking step from CUDA graphs
            graphs = self.config.cuda_graphs
            backend.cuda_graphs = backend.device.type == "cuda" if graphs is None else graphs
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        info = frames.info
        self.n_frames, self.height, self.width = info.n_frames, info.height, info.width
        self.signature = signature
        if signature is not None:
            check_job(self.workdir, signature, reset=reset)
        self.results = ResultStore(self.workdir / "results.zarr", n_frames=self.n_frames, height=self.height,
                                   width=self.width)
        self.bank = MemoryBank(self.workdir, self.n_frames, device=backend.device,
                               host_budget_bytes=self.config.host_budget_bytes)
        if signature is not None:
            sign_job(self.workdir, signature)
        self.features: FeatureStore | None = None  # image features on disk (a cache, signed like the job
        # and by how frames become model input: a store built from other inputs is rebuilt)
        self._features_in_flight: tuple | None = None  # (frame, host tensors, CUDA event): being copied
        if signature is not None and self.config.feature_store and hasattr(backend, "features_to_store"):
            self.features = FeatureStore(self.workdir / "features.zarr", self.n_frames,
                                         signature={**signature, "model_input": MODEL_INPUT_VERSION},
                                         disk_budget_bytes=self.config.feature_disk_budget_bytes,
                                         drop_when_behind=True)  # tracking never waits for a cache
        self._objects: dict[int, _Object] = {}
        self._features: collections.OrderedDict[int, object] = collections.OrderedDict()
        self._inputs: dict = {}  # frame -> Future of its model input, prepared ahead (features.py)
        self._stored: dict = {}  # frame -> Future of its feature-store rows, read ahead (features.py)
        self._input_pool = None  # the thread preparing them, started on first use
        self._side_stream = None  # CUDA stream of the encoder when it runs ahead (features.py)
        self._ahead_error: tuple | None = None  # (frame, error) of a failure encoding ahead: raised at its step
        self._cancel = threading.Event()
        self._flusher = Flusher(self.results, self.bank)
        self._fresh: dict[tuple[int, int], tuple] = {}  # this frame's results at video resolution
        self._closed = False
        self._restore()

    def _restore(self) -> None:
        """Reopen a workdir: objects, keyframes and results as they were (after a crash too).

        Prompts whose memory never reached the disk (added, not yet propagated)
        are run again: a prompt is deterministic, so nothing changes."""
        self._restore_concepts()
        saved = self.results.load_prompts()
        for oid in self.results.object_ids:
            o = _Object(oid, visited=np.full(self.n_frames, -1, np.int8))
            self._objects[oid] = o
            st = self.results.status(oid)
            tracked = (st == Status.PROPAGATED) | (st == Status.STALE)
            o.visited[tracked] = self.bank.reverse_flags(oid)[tracked]
            for f, (rec, mask) in sorted(saved.get(oid, {}).items()):
                prompt = prompt_from_record(rec, mask)
                e = self.bank.get(oid, f)
                if e is not None and e.keyframe:
                    o.prompts[f] = prompt
                    if rec.get("visited", -1) >= 0:
                        o.visited[f] = rec["visited"]
                else:  # never finalized: run it again
                    o.visited[f] = rec.get("visited", -1)
                    self._prompt(f, oid, prompt)
        if self._objects:
            log.info("reopened %s: objects %s", self.workdir, self.obj_ids)

    # -- objects ---------------------------------------------------------------
    @property
    def obj_ids(self) -> list[int]:
        """The session's object ids, ascending."""
        return sorted(self._objects)

    def add_object(self, obj_id: int, *, name: str | None = None, parent: int | None = None, color=None) -> None:
        """Declare object ``obj_id`` (1 .. 2**31 - 1) with an optional ``name``, lineage ``parent`` (the id
        of the object it divided from) and display ``color`` (r, g, b), each 0..255. Prompting an unknown
        id adds it too; for a known id the fields given are updated (None keeps the stored value). Raises
        :class:`PromptError` for a bad id, parent or colour, :class:`SessionClosedError` after :meth:`close`."""
        self._check_open()
        if not isinstance(obj_id, (int, np.integer)) or not 1 <= obj_id <= 2**31 - 1:
            raise PromptError(f"object ids are integers from 1 to 2**31 - 1, got {obj_id!r}")
        obj_id = int(obj_id)
        if parent is not None and (isinstance(parent, bool) or not isinstance(parent, (int, np.integer))
                                   or not 1 <= parent <= 2**31 - 1 or int(parent) == obj_id):
            raise PromptError(f"parent {parent!r} of object {obj_id}: the id of another object (1 to 2**31 - 1), "
                              "the cell it divided from, or None")
        if color is not None:
            c = list(color) if isinstance(color, (list, tuple, np.ndarray)) else []
            if len(c) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
                                      for v in c):
                raise PromptError(f"color {color!r} of object {obj_id}: give (r, g, b) as three integers 0..255")
            color = tuple(int(v) for v in c)
        if obj_id not in self._objects:
            self._objects[obj_id] = _Object(obj_id, visited=np.full(self.n_frames, -1, np.int8))
        self.results.add_object(obj_id, name=name, parent=parent, color=color)

    def remove_object(self, obj_id: int) -> None:
        """Remove ``obj_id`` with its prompts, memory and results. Raises :class:`UnknownObjectError`."""
        self._check_open()
        self._obj(obj_id)
        del self._objects[obj_id]
        self.bank.drop_object(obj_id)
        self.results.remove_object(obj_id)

    def _obj(self, obj_id: int) -> _Object:
        try:
            return self._objects[obj_id]
        except KeyError:
            raise UnknownObjectError(f"unknown object {obj_id}; objects are {self.obj_ids or 'none yet'}") from None

    def keyframes(self, obj_id: int) -> list[int]:
        """Frames (0-based, ascending) where ``obj_id`` has a prompt. Raises :class:`UnknownObjectError`."""
        return self._obj(obj_id).keyframes

    def prompt_at(self, frame: int, obj_id: int):
        """The prompt of ``obj_id`` on ``frame`` (:class:`Points`, with an optional box, or
        :class:`Mask`), or None."""
        return self._obj(obj_id).prompts.get(self._check_frame(frame))

    def status(self, obj_id: int) -> np.ndarray:
        """(N,) uint8 per frame: 0 not run, 1 propagated, 2 prompted, 3 stale (see :class:`Status`)."""
        self._obj(obj_id)
        return self.results.status(obj_id)

    # -- prompts -----------------------------------------------------------------
    @releases_openmp_team
    def add_points(self, frame: int, obj_id: int, points, labels, *, clear: bool = True) -> FrameResult:
        """Clicks on ``frame`` for ``obj_id``: points (N, 2) as (x, y) video pixels, labels 1/0.

        ``clear=False`` adds to the clicks already on this frame. Returns the
        masks of every object on this frame at once.
        """
        self._check_frame(frame)
        old = self._objects.get(obj_id).prompts.get(frame) if obj_id in self._objects else None
        p = make_points(points, labels, self.width, self.height)
        if not clear and isinstance(old, Points):
            p = Points(old.points + p.points, old.labels + p.labels, old.box)
        return self._prompt(frame, obj_id, p)

    @releases_openmp_team
    def add_box(self, frame: int, obj_id: int, box, *, points=None, labels=None) -> FrameResult:
        """A box (x0, y0, x1, y1) in video pixels, optionally with refining points. A box partly
        outside the frame is clipped to it; one with no overlap raises :class:`PromptError`."""
        self._check_frame(frame)
        p = make_points(points, labels, self.width, self.height, box=box)
        return self._prompt(frame, obj_id, p)

    @releases_openmp_team
    def add_mask(self, frame: int, obj_id: int, mask, *, label=None) -> FrameResult:
        """A (H, W) mask at video resolution: the object's exact outline on this frame.

        ``mask`` is bool, or a label image with ``label`` naming the object's value (an int, or
        (r, g, b) for an (H, W, 3) colour image); see :func:`~samtrack.session.prompts.make_mask`."""
        self._check_frame(frame)
        return self._prompt(frame, obj_id, make_mask(mask, self.width, self.height, label=label))

    def clear_prompts(self, frame: int, obj_id: int | None = None) -> None:
        """Remove the prompts on ``frame`` (of one object, or all): it stops being a keyframe,
        and the frames its passes produced become stale."""
        self._check_frame(frame)
        for o in ([self._obj(obj_id)] if obj_id is not None else list(self._objects.values())):
            if frame not in o.prompts:
                continue
            del o.prompts[frame]
            o.pending.discard(frame)
            o.held.pop(frame, None)
            self.results.save_prompt(o.obj_id, frame, None)
            self._mark_stale(o.obj_id, frame)
            e = self.bank.get(o.obj_id, frame)
            if e is not None and o.visited[frame] >= 0:  # keep the output as a plain tracked frame (upstream does)
                self.bank.put(o.obj_id, frame, replace(e, keyframe=False, pending=False))
                self.results.set_status(o.obj_id, [frame], Status.STALE)
            else:
                self.bank.discard(o.obj_id, [frame])
                self.results.set_status(o.obj_id, [frame], Status.NOT_RUN)
        self.flush()

    def reset(self) -> None:
        """Forget every object, prompt and result (the frame cache stays)."""
        for oid in list(self._objects):
            self.remove_object(oid)
        self._concepts = []
        self.results.save_concepts([])
        self._features.clear()

    def _prompt(self, frame: int, obj_id: int, prompt, *, flush: bool = True) -> FrameResult | None:
        """Run one prompt. ``flush=False`` (many objects prompted at once, e.g. from detections): no
        flush and no frame result; the caller flushes and asks for the frame once."""
        if obj_id not in self._objects:
            self.add_object(obj_id)
        o = self._objects[obj_id]
        feats = self._frame_features(frame)
        tracked = o.visited[frame] >= 0
        reverse = bool(o.visited[frame] == 1)
        view = self._view(o, frame, reverse) if tracked else None
        kw: dict = {}
        if isinstance(prompt, Points):
            kw["points"], kw["labels"] = to_model_points(prompt, self.width, self.height, self.backend.map_points)
            prev = self.bank.get(obj_id, frame)
            if prev is not None:
                kw["prev_logits"] = prev.mask_logits
        else:
            kw["mask"] = torch.from_numpy(prompt.mask)
        with self._oom_guard():
            out = self.backend.prompt(feats, frame, view, reverse=reverse, n_frames=self.n_frames, **kw)
        entry = MemoryEntry(obj_ptr=out.obj_ptr[0], object_score=out.object_score[0], mask_logits=out.mask_logits[0],
                            iou=float(out.iou[0]), from_prompt=True, reverse=reverse, keyframe=True, pending=True)
        prev = self.bank.get(obj_id, frame)
        if tracked and prev is not None and prev.keyframe and not prev.pending and frame not in o.held:
            o.held[frame] = prev  # a finalized keyframe prompted again: later prompt steps still read it
        self.bank.put(obj_id, frame, entry)
        o.prompts[frame] = prompt
        o.pending.add(frame)
        self._save_prompt(obj_id, frame, prompt)
        self._mark_stale(obj_id, frame)
        # a mask prompt is stored exactly as given (what the user painted is what the frame shows);
        # the model's memory of it comes from its own low-res reading, as upstream's
        self._store(frame, obj_id, self._video_logits(out.mask_logits), entry, Status.PROMPTED, source=frame,
                    mask=prompt.mask if isinstance(prompt, Mask) else None)
        self._fresh.clear()
        if not flush:
            return None
        self.flush()
        return self._frame_result(frame)

    def _save_prompt(self, obj_id: int, frame: int, prompt) -> None:
        visited = int(self._objects[obj_id].visited[frame])
        rec, mask = prompt_record(prompt)
        self.results.save_prompt(obj_id, frame, {**rec, "visited": visited}, mask)

    def flush(self) -> None:
        """Make results durable: memory first, then results (a frame that reads as computed
        always has its memory on disk), after any background flush."""
        self._flusher.wait()  # a background flush first: writes stay in order
        flush_now(self.results, self.bank)

    def _mark_stale(self, obj_id: int, frame: int) -> None:
        """After a prompt change on ``frame``: exactly the frames the next full propagation recomputes
        become stale (those whose pass started at or crossed it, and those another keyframe now owns)."""
        st, src = self.results.status(obj_id), self.results.sources(obj_id)
        stale = stale_frames(frame, st, src)
        st[stale] = Status.STALE
        owned = frames_to_recompute(Track(sorted(self._objects[obj_id].prompts), st, src), frame,
                                    rule=self.config.overlap_rule)
        self.results.set_status(obj_id, np.union1d(stale, owned), Status.STALE)

    # -- results -----------------------------------------------------------------
    def _video_logits(self, low_res: torch.Tensor) -> np.ndarray:
        """(B, 1, s, s) low-res logits -> (B, H, W) float32 at video resolution, one upsampling per batch."""
        return self.backend.to_video_res(low_res, self.height, self.width).cpu().numpy()

    def _store(self, f: int, obj_id: int, video: np.ndarray, e: MemoryEntry, status: Status, source: int,
               mask: np.ndarray | None = None, *, row: int = 0, masks: np.ndarray | None = None) -> None:
        """Write one object's result. ``video``: (B, H, W) float32 logits at video resolution of the
        batch the object was computed in, the object's at ``row``; ``masks``: ``video > 0`` of the
        batch when already computed; ``mask``: (H, W) bool stored instead (a mask prompt, as given)."""
        batch = masks if mask is None else None  # the rows a frame_result may return as they are
        if mask is None:
            mask = masks[row] if masks is not None else video[row] > 0
        score = float(e.object_score.reshape(-1)[0])
        self.results.write(f, obj_id, mask, status=status, object_score=score, iou=e.iou, source=source)
        self._fresh[(obj_id, f)] = (video, row, score, e.iou, mask, batch)

    @releases_openmp_team  # a server's request thread or the viewer's UI thread reads frames while another tracks
    def frame_result(self, frame: int, obj_ids=None) -> FrameResult:
        """Masks, logits and scores of ``frame`` for the given objects (default all): a
        :class:`FrameResult` with masks (K, H, W) bool and logits (K, H, W) float32 at video resolution,
        object-presence logits (> 0: present) and predicted IoUs (K,) float32 (NaN for an object not
        computed on the frame).
        Raises :class:`FrameIndexError` / :class:`UnknownObjectError`."""
        return self._frame_result(frame, obj_ids)

    def _frame_result(self, frame: int, obj_ids=None) -> FrameResult:
        """:meth:`frame_result` for the session's own callers (a propagation, per frame: the team stays)."""
        self._check_frame(frame)
        ids = list(self.obj_ids if obj_ids is None else obj_ids)
        for oid in ids:
            self._obj(oid)  # an unknown id: UnknownObjectError, not an empty mask
        if ids and all((oid, frame) in self._fresh for oid in ids):  # just computed: no second upsampling
            vals = [self._fresh[(oid, frame)] for oid in ids]
            batch, r0, n = vals[0][0], vals[0][1], len(ids)
            if vals[0][5] is not None and all(v[0] is batch and v[5] is vals[0][5] and v[1] == r0 + k
                                              for k, v in enumerate(vals)):
                # the objects of one batch, in order: its rows, not copies (the result store encoded its own)
                logits, masks = batch[r0:r0 + n], vals[0][5][r0:r0 + n]
            else:
                logits, masks = np.stack([v[0][v[1]] for v in vals]), np.stack([v[4] for v in vals])
            return FrameResult(frame, ids, self._exact_masks(frame, ids, logits, masks),
                               logits.astype(np.float32, copy=False), np.array([v[2] for v in vals], np.float32),
                               np.array([v[3] for v in vals], np.float32))
        lows, scores, ious = [], [], []
        s = self.backend.low_res_size
        for oid in ids:
            e = self.bank.get(oid, frame)
            if e is None:
                lows.append(torch.full((1, s, s), float(self.backend.no_object_logit)))
                scores.append(np.nan)
                ious.append(np.nan)
            else:
                lows.append(e.mask_logits.to("cpu"))
                scores.append(float(e.object_score.reshape(-1)[0]))
                ious.append(e.iou)
        if ids:
            logits = self.backend.to_video_res(torch.stack(lows), self.height, self.width).cpu().numpy()
        else:
            logits = np.zeros((0, self.height, self.width), np.float32)
        return FrameResult(frame, ids, self._exact_masks(frame, ids, logits), logits.astype(np.float32),
                           np.array(scores, np.float32), np.array(ious, np.float32))

    def _exact_masks(self, frame: int, ids, logits: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Masks from logits (or ``masks``, already ``logits > 0``), except where a mask prompt gives the
        frame's mask exactly."""
        masks = logits > 0 if masks is None else masks
        for k, oid in enumerate(ids):
            p = self._objects[oid].prompts.get(frame) if oid in self._objects else None
            if isinstance(p, Mask):
                masks[k] = p.mask
        return masks

    def export(self, fmt: str, output, *, force: bool = False, allow_incomplete: bool = False,
               progress=None, **options):
        """Flush, then write the results as ``fmt`` to ``output``
        (:func:`samtrack.io.export.export`, with this session's frames); returns its
        :class:`~samtrack.io.export.ExportReport`. Raises :class:`~samtrack.io.export.ExportError`."""
        from samtrack.io.export import export

        self._check_open()
        self.flush()
        return export(self.results, fmt, output, force=force, allow_incomplete=allow_incomplete, progress=progress,
                      frames=self.frames, **options)

    # -- plumbing ------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"the session on {self.workdir} is closed: open it again with open_session(..., "
                                     f"workdir={str(self.workdir)!r}) to go on (everything is saved there)")

    def _check_frame(self, frame) -> int:
        self._check_open()
        if not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < self.n_frames:
            raise FrameIndexError(f"frame {frame!r} is out of range: the video has {self.n_frames} frames (0..{self.n_frames - 1})")
        return int(frame)

    def _oom_guard(self):
        session = self

        class _Guard:
            def __enter__(self):
                return self

            def __exit__(self, et, ev, tb):
                if et is not None and issubclass(et, torch.OutOfMemoryError):
                    raise OutOfMemoryError(
                        f"the device ran out of memory ({ev}); lower image_size, track fewer objects at once, or "
                        f"lower feature_cache_frames (now {session.config.feature_cache_frames}); every frame "
                        "finished before this one is stored") from ev
                return False

        return _Guard()

    def close(self) -> None:
        """Write what is queued, stop the background flusher, release the stores and the video.

        Idempotent, and safe after a failure: every step runs even when an earlier one
        raised, then the first error is raised (a write that failed stays on disk as far as
        it got; the frames it did not reach read as not computed)."""
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        for step in (self._close_inputs, self.flush, self._flusher.close, self.bank.close, self.results.close, self._features.clear,
                     self._store_features, self.features.close if self.features is not None else None,
                     self.frames.close, self._folder_lock.release):  # the folder's lock last: all is written
            if step is None:
                continue
            try:
                step()
            except BaseException as e:  # keep closing the rest; report the first failure
                log.warning("closing the session: %s failed: %s", getattr(step, "__qualname__", step), e)
                first = first or e
        if first is not None:
            raise first

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "TrackingSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
