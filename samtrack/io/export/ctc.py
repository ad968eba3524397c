"""Cell Tracking Challenge result folder: ``maskTTT.tif`` (uint16 labels, zlib) and ``res_track.txt``.

The CTC rules this writer keeps (what py-ctcmetrics' validator checks):

- labels are 1..65,535 whatever the object ids: objects are renumbered 1..n in
  ascending id order; a later piece of a track split at a gap gets the next free
  label, in order of its first frame (then object id);
- every track listed in ``res_track.txt`` (``L B E P``: label, begin, end, parent)
  is in every mask from B to E, after overlaps are flattened (smaller object on
  top, :mod:`samtrack.io.export.labels`); an object hidden on some frames is
  split there like any gap, the later piece's parent being the earlier piece;
- a parent track ends before its children begin: a mother whose masks go on
  after her first daughter begins is cut at the frame before; her masks from
  then on are dropped and reported (:attr:`ExportReport.hidden`, a warning);
- a daughter whose parent has no frame before her first frame gets parent 0,
  with a warning;
- an empty result is an empty CTC folder (all-zero masks, empty ``res_track.txt``)
  with a warning (CTC validators reject a result without tracks).

``samtrack_objects.json`` maps each label back to its object id and name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtrack.io.export import ExportError, ranges
from samtrack.io.export.labels import flatten, store_masks

MAX_LABEL = 65535


@dataclass(frozen=True)
class Track:
    """One CTC track: frames ``begin``..``end`` (inclusive, all present) of object ``obj`` as ``label``."""

    label: int
    begin: int
    end: int
    parent: int
    obj: int


@dataclass(frozen=True)
class Lineage:
    """Which parents are kept and where mothers end: ``parent`` {object: parent object (kept links only)},
    ``cut`` {mother: first frame whose mask is dropped}."""

    parent: dict[int, int]
    cut: dict[int, int]


def segments(present: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive True frames as (begin, end) inclusive."""
    out, start = [], None
    for t, p in enumerate(present):
        if p and start is None:
            start = t
        if not p and start is not None:
            out.append((start, t - 1))
            start = None
    if start is not None:
        out.append((start, len(present) - 1))
    return out


def present_frames(store) -> dict[int, np.ndarray]:
    """{object: (T,) bool}: frames where its mask has pixels (before flattening)."""
    out = {o: np.zeros(store.n_frames, bool) for o in store.object_ids}
    for t in range(store.n_frames):
        for o, m in store_masks(store, t).items():
            out[o][t] = m is not None and bool(m.any())
    return out


def plan_lineage(store, present: dict[int, np.ndarray], log) -> Lineage:
    """Keep each parent link whose parent has a frame before the daughter's first frame; cut every
    mother at her first daughter's first frame (warnings in ``log``)."""
    parent, cut, daughters = {}, {}, {}
    for d in store.object_ids:
        p = store.object_meta(d).get("parent")
        if p is None or not present[d].any():
            continue
        begin = int(np.argmax(present[d]))
        if p not in present or p == d or not present[p][:begin].any():
            why = "is not in the result" if p not in present else f"has no frame before frame {begin}"
            log.warn(f"object {d}: its parent {p} {why}, where {d} begins; written with parent 0")
            continue
        parent[d] = p
        cut[p] = min(cut.get(p, begin), begin)
        daughters.setdefault(p, []).append(d)
    for p, c in cut.items():
        dropped = np.flatnonzero(present[p][c:]) + c
        if dropped.size:
            ds = ", ".join(map(str, sorted(daughters[p])))
            log.drop(p, dropped.tolist(), f"object {p}: a mother's track must end before her daughters ({ds}) begin "
                                          f"at frame {c}; her masks on frames {ranges(dropped.tolist())} are dropped")
    return Lineage(parent, cut)


class _Labeller:
    """Assigns CTC labels frame by frame: object k (ascending ids) is label k on its first piece;
    every later piece takes the next free label."""

    def __init__(self, objects: list[int], lineage: Lineage, log):
        self.rank = {o: k + 1 for k, o in enumerate(objects)}
        self.next = len(objects) + 1
        self.lineage, self.log = lineage, log
        self.open: dict[int, list] = {}  # object -> [label, begin, end, parent] of its current piece
        self.pieces: dict[int, list[list]] = {o: [] for o in objects}

    def frame(self, t: int, visible: tuple[int, ...]) -> dict[int, int]:
        """{object: label} on frame ``t``, given the objects visible there."""
        out = {}
        for o in visible:
            cur = self.open.get(o)
            if cur is not None and cur[2] == t - 1:
                cur[2] = t
            else:
                cur = self._start(o, t)
            out[o] = cur[0]
        return out

    def _start(self, o: int, t: int) -> list:
        done = self.pieces[o]
        if done:
            label, parent = self.next, done[-1][0]
            self.next += 1
        else:
            label, parent = self.rank[o], self._mother_label(o, t)
        if label > MAX_LABEL:
            raise ExportError(f"CTC masks are 16-bit: more than {MAX_LABEL} tracks after splitting objects at gaps "
                              "and hidden frames; export fewer objects or frames")
        piece = [label, t, t, parent]
        done.append(piece)
        self.open[o] = piece
        return piece

    def _mother_label(self, o: int, t: int) -> int:
        p = self.lineage.parent.get(o)
        if p is None:
            return 0
        before = [pc for pc in self.pieces[p] if pc[2] < t]
        if not before:
            self.log.warn(f"object {o}: its parent {p} is not visible before frame {t}, where {o} begins "
                          "(covered by smaller objects); written with parent 0")
            return 0
        return before[-1][0]

    def tracks(self) -> list[Track]:
        return sorted((Track(*pc, obj=o) for o, ps in self.pieces.items() for pc in ps), key=lambda tr: tr.label)


def write(store, path, *, log, progress=None, **_):
    import tifffile

    out = Path(path)
    out.mkdir(parents=True)
    objects = store.object_ids
    present = present_frames(store)
    lineage = plan_lineage(store, present, log)
    labeller = _Labeller(objects, lineage, log)
    index = {o: k + 1 for k, o in enumerate(objects)}  # flattened values: 1..n, mapped to labels per frame
    n, digits = store.n_frames, max(3, len(str(store.n_frames - 1)))
    for t in range(n):
        masks = {o: m for o, m in store_masks(store, t).items() if t < lineage.cut.get(o, n)}
        flat = flatten(masks, (store.height, store.width), values=index, dtype=np.uint32)
        for o in flat.hidden:
            log.hide(o, t)
        lut = np.zeros(len(objects) + 1, np.uint16)
        for o, lab in labeller.frame(t, flat.visible).items():
            lut[index[o]] = lab
        tifffile.imwrite(out / f"mask{t:0{digits}d}.tif", lut[flat.labels], compression="zlib")
        if progress:
            progress(t + 1, n)
    tracks = labeller.tracks()
    if not tracks and objects:
        log.warn("no object is visible on any frame: the CTC folder is empty (all-zero masks, empty res_track.txt)")
    (out / "res_track.txt").write_text("".join(f"{tr.label} {tr.begin} {tr.end} {tr.parent}\n" for tr in tracks))
    names = {tr.label: {"object": tr.obj, "name": store.object_meta(tr.obj).get("name")} for tr in tracks}
    (out / "samtrack_objects.json").write_text(json.dumps({str(k): v for k, v in names.items()}, indent=1))
