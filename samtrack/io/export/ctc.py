"""Cell Tracking Challenge result folder: ``maskTTT.tif`` (uint16 labels) and ``res_track.txt``.

CTC requires a track to be continuous: an object that disappears and comes
back is split into separate tracks at each gap, the later piece getting a new
label whose parent is the earlier piece (``L B E P``: label, begin, end, parent).
Lineage parents given to objects carry over to their first piece.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from samtrack.io.export import ExportError


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


def plan_tracks(store) -> tuple[dict[tuple[int, int], int], list[tuple[int, int, int, int]]]:
    """({(object, frame): label}, [(label, begin, end, parent)])."""
    labels: dict[tuple[int, int], int] = {}
    pieces: dict[int, list[tuple[int, int, int]]] = {}  # object -> [(label, begin, end)]
    next_label = max(store.object_ids) + 1
    for o in store.object_ids:
        present = np.array([(m := store.mask(t, o)) is not None and bool(m.any()) for t in range(store.n_frames)])
        pieces[o] = []
        for k, (b, e) in enumerate(segments(present)):
            lab = o if k == 0 else next_label
            next_label += k > 0
            pieces[o].append((lab, b, e))
            for t in range(b, e + 1):
                labels[(o, t)] = lab
    if next_label > 65536:
        raise ExportError(f"CTC masks are 16-bit: {next_label - 1} labels after splitting tracks at gaps is too many")
    rows = []
    for o, ps in pieces.items():
        for k, (lab, b, e) in enumerate(ps):
            parent = ps[k - 1][0] if k else _mother(pieces, store.object_meta(o).get("parent"), b)
            rows.append((lab, b, e, parent))
    return labels, sorted(rows)


def _mother(pieces, parent_obj, begin: int) -> int:
    """The mother's piece that ended last before the daughter begins (0: no mother)."""
    if parent_obj is None or parent_obj not in pieces or not pieces[parent_obj]:
        return 0
    before = [p for p in pieces[parent_obj] if p[2] < begin]
    return (before[-1] if before else pieces[parent_obj][0])[0]


def write(store, path, *, progress=None, **_):
    import tifffile

    out = Path(path)
    out.mkdir(parents=True)
    labels, rows = plan_tracks(store)
    digits = max(3, len(str(store.n_frames - 1)))
    n = store.n_frames
    for t in range(n):
        img = np.zeros((store.height, store.width), np.uint16)
        for o in store.object_ids:
            m = store.mask(t, o)
            if m is not None and (o, t) in labels:
                img[m] = labels[(o, t)]
        tifffile.imwrite(out / f"mask{t:0{digits}d}.tif", img)
        if progress:
            progress(t + 1, n)
    (out / "res_track.txt").write_text("".join(f"{lab} {b} {e} {p}\n" for lab, b, e, p in rows))
