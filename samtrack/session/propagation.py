"""Propagation: plan a call, run its sweeps, launch each frame's tracking step, assemble memory views.

A mixin of :class:`~samtrack.session.session.TrackingSession` (it uses the session's objects,
stores, backend, flusher and frame features). What is computed is decided by
:mod:`samtrack.session.planner` before the model runs; this module carries the plan out with one
frame in flight (frame f's results are stored while frame f+1 computes).
"""
from __future__ import annotations

import collections
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterator

from samtrack.errors import InvalidOptionError, NoPromptsError, UnreachableFramesError
from samtrack.io.export import ranges as ranges_text
from samtrack.memory.entry import MemoryEntry
from samtrack.session.backends.base import FrameHistory, MemoryView, TrackRequest
from samtrack.session.devices import releases_openmp_team
from samtrack.session.inflight import Launched, to_host
from samtrack.session.planner import Plan, Step, Track, plan_propagation
from samtrack.session.types import FrameResult, _closest

if TYPE_CHECKING:
    from samtrack.session.session import _Object

log = logging.getLogger("samtrack.session.session")  # one logger for the session's messages


class Propagation:
    """``propagate``, ``plan`` and ``cancel`` of a tracking session, and the per-frame machinery behind them."""

    @releases_openmp_team
    def propagate(self, direction: str = "forward", start: int | None = None, stop: int | None = None, *,
                  obj_ids=None, progress: Callable[[int, int], None] | None = None) -> Iterator[FrameResult]:
        """Track prompted objects through ``start..stop`` (inclusive; default the whole video).

        ``direction``: "forward", "backward" or "both" (forward, then backward).
        Only frames that need it are computed: never-run and stale frames, and
        frames a nearer keyframe now owns. When the range needs a keyframe outside
        it (a backward pass over 0..2 whose keyframe is 5), the pass starts there
        and the frames on the way are computed and stored too (not yielded).

        Yields one :class:`FrameResult` per video frame of the range that this call
        finishes, once, after its last object is computed (with "both" a frame that
        both sweeps compute is yielded in the second), with the objects computed on it
        (and objects whose pass starts there, at their keyframe). Results are already
        written to the result store. A call with nothing to do yields nothing.
        ``progress(done, total)`` counts those video frames.

        Raises :class:`UnreachableFramesError` when frames of the range need computing
        but no pass in ``direction`` reaches any of them (keyframes only on the other
        side): say "backward"/"both", or add a prompt. :meth:`cancel` from another
        thread stops at the next frame; everything computed so far is kept.
        """
        self._check_open()
        if direction not in ("forward", "backward", "both"):
            raise InvalidOptionError(f"direction={direction!r}: use forward, backward or both")
        lo = 0 if start is None else self._check_frame(start)
        hi = self.n_frames - 1 if stop is None else self._check_frame(stop)
        if lo > hi:
            lo, hi = hi, lo
        objs = [self._obj(i) for i in (obj_ids if obj_ids is not None else self.obj_ids)]
        objs = [o for o in objs if o.prompts]
        if not objs:
            raise NoPromptsError("no prompts yet: add points, a box or a mask on at least one frame")
        self._cancel.clear()
        self._finalize_prompts(objs)
        plan = self._plan(direction, lo, hi, objs)
        if plan.unreachable:
            self._report_unreachable(plan, direction, objs)
        done, total = 0, plan.n_frames
        try:
            for si, (d, steps) in enumerate(plan.sweeps):
                sweep = self._sweep(d, steps, {f: ids for (i, f), ids in plan.yields.items() if i == si}, objs)
                try:
                    for res in sweep:
                        if self._closed:  # closed under a running propagation: stop, the close wrote it
                            return
                        self._flusher.tick()  # every 32 frames or 2 s, written while tracking goes on
                        if res is not None:
                            done += 1
                            yield res
                            if progress:
                                progress(done, total)
                        if self._cancel.is_set():
                            log.info("propagation cancelled after frame %s", res.frame_idx if res else "?")
                            return
                finally:
                    sweep.close()  # stores the frame still in flight before the final flush
        finally:
            if not self._closed:
                self.flush()
                if self.features is not None:
                    self._store_features()
                    self.features.flush(wait=False)  # a cache: the writer finishes in the background

    def plan(self, direction: str = "both", start: int | None = None, stop: int | None = None, *,
             obj_ids=None) -> Plan:
        """What ``propagate(direction, start, stop, obj_ids=...)`` would compute, without running the model
        (a :class:`~samtrack.session.planner.Plan`: its steps, the frames it yields, unreachable frames)."""
        lo = 0 if start is None else self._check_frame(start)
        hi = self.n_frames - 1 if stop is None else self._check_frame(stop)
        objs = [self._obj(i) for i in (obj_ids if obj_ids is not None else self.obj_ids)]
        return self._plan(direction, min(lo, hi), max(lo, hi), [o for o in objs if o.prompts])

    def _plan(self, direction: str, lo: int, hi: int, objs) -> Plan:
        tracks = {o.obj_id: Track(sorted(o.prompts), self.results.status(o.obj_id), self.results.sources(o.obj_id))
                  for o in objs}
        return plan_propagation(direction, lo, hi, tracks, rule=self.config.overlap_rule)

    def _report_unreachable(self, plan: Plan, direction: str, objs) -> None:
        keys = {o.obj_id: o.keyframes for o in objs}
        detail = "; ".join(f"object {o}: frames {ranges_text(f)} (keyframes {keys[o]})" for o, f in plan.unreachable.items())
        if plan.n_computed == 0:
            other = "backward" if direction == "forward" else "forward"
            raise UnreachableFramesError(
                f"a {direction} propagation cannot reach the frames asked for: no keyframe before them in that "
                f"direction ({detail}); propagate {other!r} or 'both', or add a prompt on their side",
                frames=plan.unreachable)
        log.warning("a %s propagation leaves frames no pass can reach in that direction: %s", direction, detail)

    def cancel(self) -> None:
        """Stop a running :meth:`propagate` at the next frame (callable from any thread)."""
        self._cancel.set()

    def _finalize_prompts(self, objs) -> None:
        """Encode the memory of new prompts (upstream does this at propagation start)."""
        for o in objs:
            for f in sorted(o.pending):
                e = self.bank.get(o.obj_id, f)
                mm = self.backend.encode_memory(self._frame_features(f), e.mask_logits, e.object_score, True)
                self.bank.put(o.obj_id, f, replace(e, maskmem=mm, pending=False))
            o.pending.clear()
            o.held.clear()
        self.flush()

    def _sweep(self, direction: str, steps: list[Step], yields: dict[int, tuple], objs) -> Iterator[FrameResult | None]:
        """Run one planned sweep. Yields a result for the frames in ``yields`` and None for other steps."""
        rev = direction == "backward"
        by_id = {o.obj_id: o for o in objs}
        held = None  # the frame in flight: (frame, object ids to report, launched step)
        try:
            for i, step in enumerate(steps):
                if self._closed:  # closed under a running propagation: the frame in flight is not stored
                    return
                f = step.frame
                ahead = [s.frame for s in steps[i + 1:i + 3] if s.compute]
                for g in ahead:  # read and resized on the input thread while this frame computes
                    self._prefetch_input(g)
                for oid in step.started:
                    o = by_id[oid]
                    if o.visited[f] != int(rev):
                        o.visited[f] = int(rev)
                        self._save_prompt(oid, f, o.prompts[f])
                todo = [(by_id[oid], k) for oid, k in step.compute]
                launched = self._track_frame(f, rev, todo) if todo else None
                if ahead and ahead[0] == steps[i + 1].frame:
                    self._encode_ahead(ahead[0])  # on CUDA, beside this frame's step on the device
                # one frame in flight: frame f's results are stored and yielded once frame f+1 is
                # launched, so the accelerator computes while the host writes (no per-frame sync)
                if held is not None:
                    done, held = held, None
                    yield self._finish(*done)
                held = (f, yields.get(f, ()), launched)
            if held is not None:
                done, held = held, None
                yield self._finish(*done)
        finally:
            if held is not None and not self._closed:  # closed early (cancel): what was computed is still stored
                self._finish(*held)

    def _finish(self, f: int, ids: tuple, launched) -> FrameResult | None:
        if launched is not None:
            launched.store(self)
        res = self._frame_result(f, list(ids)) if ids else None
        self._fresh.clear()
        return res

    def _track_frame(self, f: int, rev: bool, todo) -> Launched:
        """Launch frame ``f`` for ``todo``: memory goes to the bank at once (the next frame reads
        it); host copies of the results are started, and stored by :meth:`Launched.store`."""
        feats = self._frame_features(f)
        groups: dict[tuple, list] = collections.defaultdict(list)
        batch_key = getattr(self.backend, "batch_key", None)
        pad = self.config.pad_read_sets
        if pad is None:
            pad = self.backend.device.type == "cuda"
        for o, k in todo:  # (object, keyframe whose pass computes it)
            view = self._view(o, f, rev)
            if batch_key is not None:  # the family batches objects reading different frames
                key = batch_key(view, f, rev, self.n_frames, pad=pad)
            else:  # objects reading the same frames
                key = (tuple(sorted(view.cond)), tuple(sorted(view.other)))
            groups[key].append((o, view, k))
        launched = Launched(f)
        for members in groups.values():
            with self._oom_guard():
                out = self.backend.track(feats, TrackRequest(f, rev, [v for _, v, _ in members]), self.n_frames)
            same = out.mem_logits is out.mask_logits
            host, event = to_host({"video": self.backend.to_video_res(out.mask_logits, self.height, self.width),
                                    "logits": out.mask_logits, "mem": None if same else out.mem_logits,
                                    "ptr": out.obj_ptr, "score": out.object_score, "iou": out.iou})
            entries = []
            for i, (o, _, k) in enumerate(members):
                e = MemoryEntry(obj_ptr=out.obj_ptr[i], object_score=out.object_score[i],
                                mask_logits=out.mask_logits[i], iou=float("nan"), from_prompt=False, reverse=rev,
                                maskmem=out.maskmem[i] if out.maskmem is not None else None,
                                mem_logits=None if same else out.mem_logits[i])
                # on disk once stored; the IoU is read to the host when memory selection asks (no sync here)
                self.bank.put(o.obj_id, f, e, persist=False, hold=True, iou=out.iou[i])
                o.visited[f] = int(rev)
                entries.append((o.obj_id, e, k))
                launched.obj_ids.append(o.obj_id)
            launched.parts.append((entries, host, event))
        return launched

    def _view(self, o: _Object, f: int, rev: bool) -> MemoryView:
        """The keyframes (nearest N) and other frames the step at ``f`` reads, with memory encoded."""
        keys = sorted(set(o.finalized_keyframes()) | set(o.held))
        cap = self.config.max_keyframes_in_attention
        selected = _closest(f, keys, cap)
        cond = {t: self._held_entry(o, t) if t in o.held else self._full_entry(o.obj_id, t) for t in selected}
        other = {}
        history = lambda: FrameHistory(*self.bank.scores(o.obj_id))  # noqa: E731  (read only if the family asks)
        for t in self.backend.frames_read(f, rev, selected, self.n_frames, history=history):
            if t in cond or t in o.pending or t == f:
                continue
            e = self.bank.get(o.obj_id, t)
            if e is not None:
                other[t] = self._full_entry(o.obj_id, t, e)
        return MemoryView(cond, other)

    def _held_entry(self, o: _Object, t: int) -> MemoryEntry:
        """A held (replaced, still read) keyframe output with its memory encoded (re-encoded if paged out)."""
        e = o.held[t]
        if e.maskmem is None:
            logits = e.mem_logits if e.mem_logits is not None else e.mask_logits
            e = o.held[t] = replace(e, maskmem=self.backend.encode_memory(self._frame_features(t), logits,
                                                                          e.object_score, e.from_prompt))
        return e

    def _full_entry(self, obj_id: int, t: int, e: MemoryEntry | None = None) -> MemoryEntry:
        e = self.bank.get(obj_id, t) if e is None else e
        if e.maskmem is None:  # paged out to disk: re-encode from the frame and its logits (exact)
            logits = e.mem_logits if e.mem_logits is not None else e.mask_logits
            mm = self.backend.encode_memory(self._frame_features(t), logits, e.object_score, e.from_prompt)
            e = self.bank.set_maskmem(obj_id, t, mm)
        return e
