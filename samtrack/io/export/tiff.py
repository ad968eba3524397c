"""ImageJ-compatible multi-page label TIFF (T, H, W) uint16 with the time axis (opens in Fiji as a time series).

Pages are streamed from the result store (never the whole stack in RAM).
"""
from __future__ import annotations

import numpy as np

from samtrack.io.export import ExportError


def write(store, path, *, progress=None, **_):
    import tifffile

    if max(store.object_ids) > 65535:
        raise ExportError("a 16-bit label TIFF holds object ids up to 65,535; export as zarr or npy instead")
    n, h, w = store.n_frames, store.height, store.width

    def pages():
        for t in range(n):
            yield store.label_frame(t).astype(np.uint16)
            if progress:
                progress(t + 1, n)

    tifffile.imwrite(path, data=pages(), shape=(n, h, w), dtype="uint16", imagej=True,
                     metadata={"axes": "TYX"}, photometric="minisblack")
