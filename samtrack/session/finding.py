"""Prompts that create objects: a text or exemplar boxes (SAM3's concept prompt), "everything" (SAM2's
automatic mask generator), on one frame, and re-detection every N frames during propagation.

A mixin of :class:`~samtrack.session.session.TrackingSession`. The backend's optional ``detect``
finds objects on a frame; each detection that does not overlap an object the session already has
there becomes a new object whose prompt is the detection's mask on that frame (a mask prompt, as
upstream's SAM3 video model hands its tracker a detection's mask), so from then on it is an object
like any other: corrections, removal, propagation, export.

Matching rule (re-detection and repeated queries add nothing twice): a detection whose mask has an
IoU of at least ``match_iou`` with an existing object's mask on that frame, or with a detection kept
earlier in the same call, is that object. The default 0.1 is SAM3's own association threshold
between detections and tracked masks (``assoc_iou_thresh=0.1`` in ``sam3.model_builder``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from samtrack.errors import InvalidOptionError, PromptError
from samtrack.io.result_store import Status
from samtrack.session.backends.base import DetectRequest, Detection
from samtrack.session.devices import releases_openmp_team
from samtrack.session.prompts import Concept, Everything, Mask, make_concept, prompt_from_record, prompt_record
from samtrack.session.types import FrameResult

log = logging.getLogger("samtrack.session.session")

MATCH_IOU = 0.1  # sam3.model_builder: assoc_iou_thresh=0.1 (detection <-> tracked mask association)


@dataclass
class FoundObjects:
    """What an object-creating prompt did on ``frame``: ``created`` new object ids (in detection
    order, best score first), ``matched`` {existing object id: detection score} for detections that
    were objects already, ``detections`` every detection the model returned above the threshold,
    and ``result`` the frame's masks afterwards (every object)."""

    frame: int
    query: Concept | Everything
    created: list[int] = field(default_factory=list)
    matched: dict[int, float] = field(default_factory=dict)
    detections: list[Detection] = field(default_factory=list)
    result: FrameResult | None = None


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (0 when both are empty)."""
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    return inter / union if union else 0.0


class ObjectFinding:
    """``add_text``, ``add_exemplars``, ``segment_everything``, ``find_objects`` and re-detection."""

    # -- public API ---------------------------------------------------------------------------
    def add_text(self, frame: int, text: str, *, boxes=None, box_labels=None, threshold: float = 0.5,
                 match_iou: float = MATCH_IOU) -> FoundObjects:
        """Find every instance of ``text`` ("cell") on ``frame`` (SAM3 models); each detection scoring at
        least ``threshold`` (0..1) that is not an object already becomes a new object named after the
        text ("cell 1", "cell 2", ...). ``boxes`` (K, 4) (x0, y0, x1, y1) video pixels with
        ``box_labels`` (1 positive, 0 negative) add exemplars. Raises :class:`PromptError` for an
        empty text, bad boxes, or a model family without text prompts (SAM2: use
        :meth:`segment_everything`)."""
        q = make_concept(text, boxes, box_labels, width=self.width, height=self.height, threshold=threshold)
        return self.find_objects(frame, q, match_iou=match_iou)

    def add_exemplars(self, frame: int, boxes, box_labels=None, *, text: str | None = None, threshold: float = 0.5,
                      match_iou: float = MATCH_IOU) -> FoundObjects:
        """Find every object like the positive exemplar boxes (and unlike the negative ones) on ``frame``
        (SAM3 models). Same rules as :meth:`add_text`."""
        q = make_concept(text, boxes, box_labels, width=self.width, height=self.height, threshold=threshold)
        return self.find_objects(frame, q, match_iou=match_iou)

    def segment_everything(self, frame: int, *, threshold: float = 0.8, match_iou: float = MATCH_IOU,
                           **options) -> FoundObjects:
        """Every object on ``frame`` as a new object (SAM2's automatic mask generator): masks whose
        predicted IoU is at least ``threshold``. ``options`` go to the generator (e.g.
        ``points_per_side``). Objects are named "object N"."""
        if not 0.0 <= float(threshold) <= 1.0:
            raise PromptError(f"threshold={threshold}: a predicted-IoU threshold is between 0 and 1")
        q = Everything(float(threshold), tuple(sorted(options.items())))
        return self.find_objects(frame, q, match_iou=match_iou)

    @releases_openmp_team
    def find_objects(self, frame: int, query: Concept | Everything, *, match_iou: float = MATCH_IOU,
                     _record: bool = True) -> FoundObjects:
        """Run an object-creating prompt on ``frame`` and create objects for what is new there."""
        self._check_open()
        frame = self._check_frame(frame)
        if not 0.0 <= match_iou <= 1.0:
            raise InvalidOptionError(f"match_iou={match_iou}: an IoU is between 0 and 1")
        detections = self._detect(frame, query)
        found = FoundObjects(frame, query, detections=detections)
        existing = self._masks_on(frame)
        kept: list[np.ndarray] = []
        for det in sorted(detections, key=lambda d: -d.score):
            best, best_id = 0.0, None
            for oid, m in existing.items():
                iou = mask_iou(det.mask, m)
                if iou > best:
                    best, best_id = iou, oid
            if best_id is not None and best >= match_iou and best > 0:
                found.matched[best_id] = max(found.matched.get(best_id, 0.0), det.score)
                continue
            if any(mask_iou(det.mask, m) >= match_iou and np.any(det.mask & m) for m in kept):
                continue  # a duplicate of a detection kept in this call
            if not det.mask.any():
                continue
            kept.append(det.mask)
            oid = self._new_object_id()
            self.add_object(oid, name=self._object_name(query.label))
            self._prompt(frame, oid, Mask(det.mask), flush=False)  # one flush and one frame result below
            found.created.append(oid)
        if found.created:
            self.flush()
        if _record:  # the same query on the same frame again is one record (re-detection runs it once)
            rec, _ = prompt_record(query)
            same = next((r for r in self._concepts if r["frame"] == frame and prompt_from_record(r) == query), None)
            if same is None:
                self._concepts.append({"frame": frame, **rec, "objects": list(found.created)})
            else:
                same["objects"] = list(same.get("objects", [])) + list(found.created)
            self.results.save_concepts(self._concepts)
        log.info("%s on frame %d: %d detections, %d new objects, %d already tracked", query.kind, frame,
                 len(detections), len(found.created), len(found.matched))
        found.result = self._frame_result(frame)
        return found

    def remove_find(self, frame: int, query: Concept | Everything) -> list[int]:
        """Forget an object-creating prompt given on ``frame`` and remove the objects it created
        (those still present); returns their ids. Raises :class:`PromptError` when there is none."""
        self._check_open()
        rec, _ = prompt_record(query)
        for i, r in enumerate(self._concepts):
            if r["frame"] == frame and prompt_from_record(r) == query:
                gone = [o for o in r.get("objects", []) if o in self.obj_ids]
                for o in gone:
                    self.remove_object(o)
                del self._concepts[i]
                self.results.save_concepts(self._concepts)
                return gone
        raise PromptError(f"no {rec['kind']} prompt like that on frame {frame}; see session.concepts")

    def find_objects_created(self) -> set[int]:
        """Ids of the objects that object-creating prompts made (still present or not)."""
        return {o for r in self._concepts for o in r.get("objects", [])}

    @property
    def concepts(self) -> list[tuple[int, Concept | Everything]]:
        """The object-creating prompts of this job, as (frame, query), in the order they were given."""
        return [(r["frame"], prompt_from_record(r)) for r in self._concepts]

    @releases_openmp_team
    def propagate_and_redetect(self, every: int, direction: str = "both", start: int | None = None,
                               stop: int | None = None, *, match_iou: float = MATCH_IOU,
                               progress: Callable[[int, int], None] | None = None) -> Iterator[FrameResult]:
        """Propagate, then run the job's object-creating prompts again every ``every`` frames from the
        frame each was first given on, so objects that appear later (a cell after a division, an
        instrument entering the view) are added and tracked too.

        Frames are taken in order; on each, detections that match an object already there (mask IoU
        >= ``match_iou``) add nothing; new ones become objects whose prompt is their mask on that
        frame, and they are propagated over ``start..stop`` in ``direction`` before the next
        detection frame, so later frames see them. Yields the first propagation's results, then the
        new objects' results (a frame can be yielded again, with the new objects). Raises
        :class:`InvalidOptionError` for ``every < 1``, :class:`PromptError` without an
        object-creating prompt in the job."""
        if not isinstance(every, int) or every < 1:
            raise InvalidOptionError(f"redetect every={every!r}: give a number of frames, at least 1")
        if not self._concepts:
            raise PromptError("re-detection needs an object-creating prompt (a text, exemplar boxes or "
                              "'everything') on some frame first")
        lo = 0 if start is None else self._check_frame(start)
        hi = self.n_frames - 1 if stop is None else self._check_frame(stop)
        lo, hi = min(lo, hi), max(lo, hi)
        if any(self._obj(i).prompts for i in self.obj_ids):
            yield from self.propagate(direction, lo, hi, progress=progress)
        frames = sorted({f for r in self._concepts
                         for f in range(r["frame"] % every, self.n_frames, every) if lo <= f <= hi})
        queries = [(r, r["frame"], prompt_from_record(r)) for r in self._concepts]
        for f in frames:
            new: list[int] = []
            for rec, f0, q in queries:
                if f == f0:
                    continue  # the frame the query was given on: done then
                found = self.find_objects(f, q, match_iou=match_iou, _record=False)
                if found.created:  # they belong to the query: a re-run of the same prompts keeps them
                    rec["objects"] = list(rec.get("objects", [])) + found.created
                    self.results.save_concepts(self._concepts)
                new += found.created
            if new:
                log.info("re-detection on frame %d added objects %s", f, new)
                yield from self.propagate(direction, lo, hi, obj_ids=new)
            if self._cancel.is_set():
                return

    # -- helpers ------------------------------------------------------------------------------
    def _detect(self, frame: int, query: Concept | Everything) -> list[Detection]:
        detect = getattr(self.backend, "detect", None)
        kinds = getattr(self.backend, "object_queries", None)  # what the family's detect() answers
        if detect is None or (kinds is not None and query.kind not in kinds):
            raise PromptError(f"the {self.backend.family} model family cannot create objects from a "
                              f"{query.kind} prompt; use a SAM3 model for text/exemplars or a SAM2 model for "
                              "'everything'")
        if isinstance(query, Concept):
            req = DetectRequest(text=query.text, boxes=np.asarray(query.boxes, np.float32).reshape(-1, 4) if query.boxes else None,
                                box_labels=np.asarray(query.box_labels, np.int64) if query.boxes else None,
                                threshold=query.threshold)
            feats = self._frame_features(frame)
        else:
            req = DetectRequest(everything=True, threshold=query.threshold, options=dict(query.options))
            feats = None  # the generator encodes its own crops
        with self._oom_guard():
            found = detect(self.frames.read(frame), feats, req)
        return [d for d in found if d.score >= query.threshold]

    def _masks_on(self, frame: int) -> dict[int, np.ndarray]:
        """Every object's mask on ``frame`` where it was computed or prompted (not stale-free only:
        a stale mask still says where the object was)."""
        out = {}
        for oid in self.obj_ids:
            if self.results.status(oid)[frame] != Status.NOT_RUN:
                m = self.results.mask(frame, oid)
                if m is not None and m.any():
                    out[oid] = m
        return out

    def _new_object_id(self) -> int:
        """The next id after every id this job has used (a removed found object's id is not reused:
        exports made before name it)."""
        used = set(self.obj_ids) | set(self.results.object_ids) | {int(self.results.root.attrs.get("max_found_id", 0))}
        new = max(used) + 1
        self.results.root.attrs["max_found_id"] = new
        return new

    def _object_name(self, label: str) -> str:
        names = {self.results.object_meta(o).get("name") for o in self.results.object_ids}
        k = 1
        while f"{label} {k}" in names:
            k += 1
        return f"{label} {k}"

    def _restore_concepts(self) -> None:
        self._concepts = self.results.load_concepts()
