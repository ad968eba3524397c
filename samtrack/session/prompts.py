"""Prompts (frozen dataclasses) and their validation against the video size.

Coordinates are (x, y) in original video pixels; boxes are (x0, y0, x1, y1);
masks are (H, W) bool at video resolution.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from samtrack.errors import PromptError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Points:
    points: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]
    box: tuple[float, float, float, float] | None = None  # a box with optional refining points

    kind = "points"


@dataclass(frozen=True, eq=False)
class Mask:
    mask: np.ndarray = field(repr=False)

    kind = "mask"


Prompt = Points | Mask


# -- object-creating prompts ---------------------------------------------------------------------
@dataclass(frozen=True)
class Concept:
    """"Find every <text>" on a frame, optionally with exemplar boxes (SAM3's concept prompt).

    ``text``: a noun phrase ("cell"), or None with exemplars only; ``boxes``: exemplar boxes
    (x0, y0, x1, y1) in video pixels; ``box_labels``: 1 = an example of the concept, 0 = not;
    ``threshold``: detections scoring at least this (0..1) become objects."""

    text: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    box_labels: tuple[int, ...] = ()
    threshold: float = 0.5

    kind = "concept"

    @property
    def label(self) -> str:
        """What the objects it creates are named after."""
        return self.text or "exemplar"


@dataclass(frozen=True)
class Everything:
    """Segment every object on a frame (SAM2's automatic mask generator); ``threshold`` is the
    predicted-IoU a mask needs; ``options`` family-specific settings as (name, value) pairs."""

    threshold: float = 0.8
    options: tuple[tuple[str, object], ...] = ()

    kind = "everything"
    label = "object"


ObjectQuery = Concept | Everything


@dataclass(frozen=True)
class PromptKind:
    """How one kind of prompt is stored in a job's records and read back."""

    kind: str
    cls: type
    to_record: object  # prompt -> (dict, mask array | None)
    from_record: object  # (dict, mask array | None) -> prompt
    creates_objects: bool = False


PROMPT_KINDS: dict[str, PromptKind] = {}


def register_prompt_kind(kind: PromptKind) -> None:
    """Add a kind of prompt (its record format): the session stores and reopens any registered kind."""
    PROMPT_KINDS[kind.kind] = kind


def prompt_record(prompt) -> tuple[dict, np.ndarray | None]:
    """The stored record of a prompt: (JSON-able dict with ``"kind"``, mask array or None)."""
    for pk in PROMPT_KINDS.values():
        if isinstance(prompt, pk.cls):
            rec, mask = pk.to_record(prompt)
            return {"kind": pk.kind, **rec}, mask
    raise PromptError(f"no registered prompt kind for {type(prompt).__name__}")


def prompt_from_record(rec: dict, mask: np.ndarray | None = None):
    """Inverse of :func:`prompt_record`; an unknown kind raises :class:`PromptError`."""
    pk = PROMPT_KINDS.get(rec.get("kind"))
    if pk is None:
        raise PromptError(f"a stored prompt of unknown kind {rec.get('kind')!r}; known: {', '.join(PROMPT_KINDS)}")
    return pk.from_record(rec, mask)


register_prompt_kind(PromptKind(
    "points", Points,
    lambda p: ({"points": [list(x) for x in p.points], "labels": list(p.labels),
                "box": list(p.box) if p.box else None}, None),
    lambda r, m: Points(tuple(map(tuple, r["points"])), tuple(r["labels"]), tuple(r["box"]) if r.get("box") else None)))
register_prompt_kind(PromptKind("mask", Mask, lambda p: ({}, p.mask), lambda r, m: Mask(np.asarray(m, bool))))
register_prompt_kind(PromptKind(
    "concept", Concept,
    lambda p: ({"text": p.text, "boxes": [list(b) for b in p.boxes], "box_labels": list(p.box_labels),
                "threshold": p.threshold}, None),
    lambda r, m: Concept(r.get("text"), tuple(tuple(b) for b in r.get("boxes", ())), tuple(r.get("box_labels", ())),
                         float(r.get("threshold", 0.5))), creates_objects=True))
register_prompt_kind(PromptKind(
    "everything", Everything,
    lambda p: ({"threshold": p.threshold, "options": [list(o) for o in p.options]}, None),
    lambda r, m: Everything(float(r.get("threshold", 0.8)), tuple(tuple(o) for o in r.get("options", ()))),
    creates_objects=True))


def make_concept(text=None, boxes=None, box_labels=None, *, width: int, height: int, threshold: float = 0.5) -> Concept:
    """A validated :class:`Concept`: a non-empty text and/or exemplar boxes (clipped to the frame,
    labels default to 1). Raises :class:`PromptError` for an empty query, bad boxes or labels, or a
    threshold outside 0..1."""
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise PromptError(f"text={text!r}: give a noun phrase such as 'cell', or exemplar boxes")
    bs = [] if boxes is None else [check_box(b, width, height) for b in np.asarray(boxes, float).reshape(-1, 4)]
    labs = [1] * len(bs) if box_labels is None else [int(x) for x in np.asarray(box_labels).reshape(-1)]
    if len(labs) != len(bs):
        raise PromptError(f"{len(bs)} exemplar boxes but {len(labs)} labels: one label (1 positive, 0 negative) per box")
    if any(x not in (0, 1) for x in labs):
        raise PromptError(f"exemplar labels are 1 (positive) or 0 (negative), got {sorted(set(labs))}")
    if text is None and not bs:
        raise PromptError("a concept prompt needs a text ('cell') or at least one exemplar box")
    if text is None and not any(labs):
        raise PromptError("exemplar boxes without text need at least one positive box (label 1)")
    if not 0.0 <= float(threshold) <= 1.0:
        raise PromptError(f"threshold={threshold}: a detection score threshold is between 0 and 1")
    return Concept(text.strip() if text else None, tuple(bs), tuple(labs), float(threshold))


def make_points(points, labels, width: int, height: int, *, box=None) -> Points:
    pts = np.asarray(points if points is not None else np.zeros((0, 2)), dtype=np.float64)
    if pts.ndim == 1 and pts.size == 2:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise PromptError(f"points must be (N, 2) as (x, y) pairs, got shape {pts.shape}")
    try:
        given = np.asarray(labels if labels is not None else np.zeros(0)).reshape(-1)
        lab = given.astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        raise PromptError(f"labels must be 1 (positive) or 0 (negative), got {labels!r}") from None
    if len(lab) != len(pts):
        raise PromptError(f"{len(pts)} points but {len(lab)} labels: give one label (1 positive, 0 negative) per point")
    if not np.isin(lab, (0, 1)).all() or (given.dtype.kind == "f" and not np.array_equal(given, lab)):
        shown = sorted(set(given.tolist())) if given.dtype.kind in "fiub" else sorted(set(lab.tolist()))
        raise PromptError(f"labels must be 1 (positive) or 0 (negative), got {shown}")
    if not np.isfinite(pts).all():
        raise PromptError("points contain NaN or infinity")
    bad = (pts[:, 0] < 0) | (pts[:, 0] > width) | (pts[:, 1] < 0) | (pts[:, 1] > height)
    if bad.any():
        x, y = pts[bad][0]
        raise PromptError(f"point ({x:g}, {y:g}) is outside the {width}x{height} frame; points are (x, y) in video pixels")
    b = None
    if box is not None:
        b = check_box(box, width, height)
    if b is None and len(pts) == 0:
        raise PromptError("no points: give at least one point with its label, or a box")
    return Points(tuple(map(tuple, pts.tolist())), tuple(lab.tolist()), b)


def check_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) in video pixels, clipped to the ``width`` x ``height`` frame.

    Detectors routinely give boxes a few pixels past the border (even negative): the part
    inside the frame is the prompt. Raises :class:`PromptError` for a malformed, inverted or
    empty box, and for a box with no overlap with the frame (the message says "outside")."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise PromptError(f"a box is 4 numbers (x0, y0, x1, y1), got {list(np.asarray(box).reshape(-1))}")
    x0, y0, x1, y1 = b.tolist()
    if x1 <= x0 or y1 <= y0:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or inverted: need x0 < x1 and y0 < y1")
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies entirely outside the {width}x{height} frame; "
                          "boxes are (x0, y0, x1, y1) in video pixels")
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        log.info("box (%g, %g, %g, %g) clipped to the %dx%d frame", x0, y0, x1, y1, width, height)
    return (cx0, cy0, cx1, cy1)


def make_mask(mask, width: int, height: int, *, label=None) -> Mask:
    """A mask prompt from an (H, W) array at video resolution.

    ``mask``: bool, or a label image (integers; (H, W, 3) colours). Without ``label`` it must
    hold one object: bool, or a single nonzero value (0/1, 0/255). With ``label`` the object is
    the pixels equal to it (an int, or an (r, g, b) colour for an RGB image). Which label is the
    object's is never guessed: several labels without ``label`` raise :class:`PromptError`."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape[:2] != (height, width) or m.ndim not in (2, 3):
        raise PromptError(f"mask is {m.shape[1::-1] if m.ndim >= 2 else m.shape} but the video is {width}x{height}: "
                          "give an (H, W) mask at video resolution")
    if m.ndim == 3:
        m = m[..., :3]
        if label is None:
            colours = np.unique(m.reshape(-1, 3), axis=0)
            colours = colours[colours.any(axis=1)]
            if len(colours) > 1:
                raise PromptError(f"the mask image has {len(colours)} colours, e.g. {colours[:3].tolist()}: say which "
                                  "is this object's with label=[r, g, b] (\"label\" in a prompt file)")
            m = m.any(axis=2)
        else:
            lab = np.asarray(label).reshape(-1)
            if lab.size != 3:
                raise PromptError(f"an RGB mask image needs label=[r, g, b], got {label!r}")
            m = (m == lab).all(axis=2)
    elif label is not None:
        if np.asarray(label).size != 1:
            raise PromptError(f"label={label!r}: a single-channel label image takes one integer label")
        m = m == np.asarray(label).reshape(())
    elif m.dtype != bool:
        values = np.unique(m)
        values = values[values != 0]
        if len(values) > 1:
            raise PromptError(f"the mask holds {len(values)} labels ({_some(values)}): say which is this object's "
                              "with label=N (\"label\" in a prompt file); a binary mask has one nonzero value")
    m = m.astype(bool)
    if not m.any():
        where = f" with label {label!r}" if label is not None else ""
        raise PromptError(f"the mask is empty{where}: paint at least one pixel, or remove the object instead")
    return Mask(m)


def _some(values) -> str:
    v = [int(x) if float(x).is_integer() else float(x) for x in values[:5]]
    return ", ".join(map(str, v)) + (", ..." if len(values) > 5 else "")


def to_model_points(p: Points, width: int, height: int, map_points):
    """(P, 2) float32 coordinates in model pixels and (P,) int32 labels; a box is two points labelled 2
    (top-left) and 3 (bottom-right) before the clicks, SAM's prompt-encoder convention (sam2 and sam3).
    ``map_points``: the backend's (N, 2) video pixels -> model pixels mapping."""
    import torch

    pts = np.asarray(p.points, np.float32).reshape(-1, 2)
    lab = np.asarray(p.labels, np.int32).reshape(-1)
    if p.box is not None:
        pts = np.concatenate([np.asarray(p.box, np.float32).reshape(2, 2), pts])
        lab = np.concatenate([np.array([2, 3], np.int32), lab])
    return map_points(pts, width, height), torch.from_numpy(lab)
