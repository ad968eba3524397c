"""zarr: a (T, H, W) label stack plus per-object boolean masks, status and lineage in attributes."""
from __future__ import annotations

import numpy as np


def write(store, path, *, progress=None, **_):
    import zarr

    n, h, w = store.n_frames, store.height, store.width
    root = zarr.open_group(path, mode="w")
    dtype = store.label_frame(0).dtype
    labels = root.create_array("labels", shape=(n, h, w), chunks=(1, h, w), dtype=dtype, fill_value=0)
    masks = {oid: root.create_array(f"masks/{oid}", shape=(n, h, w), chunks=(1, h, w), dtype="bool", fill_value=False)
             for oid in store.object_ids}
    for t in range(n):
        lab = np.zeros((h, w), dtype)
        for oid in store.object_ids:
            m = store.mask(t, oid)
            if m is not None:
                masks[oid][t] = m
                lab[m] = oid
        labels[t] = lab
        if progress:
            progress(t + 1, n)
    root.attrs["objects"] = {str(o): store.object_meta(o) for o in store.object_ids}
    root.attrs["status"] = {str(o): store.status(o).tolist() for o in store.object_ids}
    root.attrs["status_codes"] = {"0": "not run", "1": "propagated", "2": "prompted", "3": "stale"}
