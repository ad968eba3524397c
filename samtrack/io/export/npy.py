"""(T, H, W) label array as .npy (uint16, or uint32 beyond id 65,535), written frame by frame.

Overlaps are flattened with the smaller object on top (:mod:`samtrack.io.export.labels`).
"""
from __future__ import annotations

import numpy as np

from samtrack.io.export.labels import flat_frames, label_dtype


def write(store, path, *, log, progress=None, **_):
    dtype = label_dtype(max(store.object_ids, default=0))
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(store.n_frames, store.height, store.width))
    for t, flat in flat_frames(store, log, dtype=dtype, progress=progress):
        arr[t] = flat.labels
    arr.flush()
    del arr
