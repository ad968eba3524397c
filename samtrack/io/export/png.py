"""One indexed (palette) PNG per frame, DAVIS style: index k = object id k, 0 = background.

Overlaps are flattened with the smaller object on top (:mod:`samtrack.io.export.labels`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from samtrack.io.export import ExportError
from samtrack.io.export.labels import flat_frames


def davis_palette() -> list[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write(store, path, *, log, progress=None, **_):
    from PIL import Image

    if max(store.object_ids, default=0) > 255:
        top = max(store.object_ids)
        other = "tiff, zarr or npy" if top <= 65535 else "zarr or npy (32-bit labels), or ctc (renumbered)"
        raise ExportError(f"palette PNG holds object ids up to 255, this result has id {top}; export as {other} instead")
    Path(path).mkdir(parents=True)
    pal = davis_palette()
    for t, flat in flat_frames(store, log, progress=progress):
        im = Image.fromarray(flat.labels.astype(np.uint8), mode="P")
        im.putpalette(pal)
        im.save(Path(path) / f"{t:05d}.png")
