"""Flattening objects into one label image: the rule every label export follows.

SAM tracks each object on its own, so the masks of two objects may overlap (a
small cell lying on a large one, two touching cells). A label image (CTC, TIFF,
PNG, NPY, the zarr ``labels`` array) holds one value per pixel, so overlaps are
resolved per frame by one rule:

    the SMALLER object is on top (mask area on that frame, in pixels);
    equal areas: the lower object id is on top.

Why smaller on top: drawing a large mask over a small one hides the small object
entirely (a nucleus inside its cell, a daughter cell inside the mother's stale
mask), while the large object only loses the pixels the small one covers. An
object whose mask is non-empty but that has no visible pixel after flattening is
*hidden* on that frame; exports report it (:attr:`ExportReport.hidden`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Flat:
    """One flattened frame. ``labels``: (H, W) values of the visible objects (0 background);
    ``visible``: objects with at least one visible pixel; ``hidden``: objects whose mask has
    pixels but none of them visible (covered by smaller objects)."""

    labels: np.ndarray
    visible: tuple[int, ...]
    hidden: tuple[int, ...]


def draw_order(areas: Mapping[int, int]) -> list[int]:
    """Objects bottom to top: largest area first; of equal areas the higher id first (lower id on top)."""
    return sorted(areas, key=lambda o: (-int(areas[o]), -int(o)))


def label_dtype(max_value: int) -> np.dtype:
    """uint16 while values fit, else uint32 (CTC and ImageJ read uint16)."""
    return np.dtype(np.uint16 if max_value <= 65535 else np.uint32)


def flatten(masks: Mapping[int, np.ndarray | None], shape: tuple[int, int], *,
            values: Mapping[int, int] | None = None, dtype=None) -> Flat:
    """Flatten ``{object: (H, W) bool mask or None}`` into one label image by the module's rule.

    ``values``: the value drawn for each object (default its id; CTC draws track labels);
    values must be distinct and non-zero. ``dtype``: default :func:`label_dtype` of the largest value.
    """
    values = {o: o for o in masks} if values is None else values
    areas = {o: int(m.sum()) for o, m in masks.items() if m is not None}
    areas = {o: a for o, a in areas.items() if a}
    if dtype is None:
        dtype = label_dtype(max((values[o] for o in areas), default=0))
    out = np.zeros(shape, dtype)
    for o in draw_order(areas):
        out[masks[o]] = values[o]
    visible, hidden = [], []
    for o in sorted(areas):
        (visible if (out[masks[o]] == values[o]).any() else hidden).append(o)
    return Flat(out, tuple(visible), tuple(hidden))


def store_masks(store, frame: int, objects=None) -> dict[int, np.ndarray | None]:
    """``{object: mask or None}`` of one frame of a ResultStore (None: not computed)."""
    return {o: store.mask(frame, o) for o in (store.object_ids if objects is None else objects)}


def flatten_frame(store, frame: int, *, dtype=None) -> Flat:
    """Frame ``frame`` of ``store`` flattened with object ids as labels."""
    if dtype is None:
        dtype = label_dtype(max(store.object_ids, default=0))
    return flatten(store_masks(store, frame), (store.height, store.width), dtype=dtype)


def label_frame(store, frame: int) -> np.ndarray:
    """(H, W) object-id labels of one frame (uint16, or uint32 beyond id 65,535), smaller objects on top."""
    return flatten_frame(store, frame).labels


def flat_frames(store, log, *, dtype=None, progress=None):
    """Yield ``(frame, Flat)`` for every frame of ``store`` (object ids as labels); objects
    hidden on a frame are recorded in ``log`` (an ExportLog); ``progress(done, total)`` after each."""
    n = store.n_frames
    if dtype is None:
        dtype = label_dtype(max(store.object_ids, default=0))
    for t in range(n):
        flat = flatten_frame(store, t, dtype=dtype)
        for o in flat.hidden:
            log.hide(o, t)
        yield t, flat
        if progress:
            progress(t + 1, n)
