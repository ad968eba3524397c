"""zarr: a (T, H, W) label stack plus per-object boolean masks, status and lineage in attributes.

``labels`` flattens overlaps with the smaller object on top (:mod:`samtrack.io.export.labels`);
``masks/<id>`` keep every object's whole mask, overlaps included.
"""
from __future__ import annotations

from samtrack.io.export.labels import flatten, label_dtype, store_masks

RULE = "overlaps: the smaller object (mask area on the frame) on top; equal areas: the lower id on top"


def write(store, path, *, log, progress=None, **_):
    import zarr

    n, h, w = store.n_frames, store.height, store.width
    root = zarr.open_group(path, mode="w")
    dtype = label_dtype(max(store.object_ids, default=0))
    labels = root.create_array("labels", shape=(n, h, w), chunks=(1, h, w), dtype=dtype, fill_value=0)
    masks = {oid: root.create_array(f"masks/{oid}", shape=(n, h, w), chunks=(1, h, w), dtype="bool", fill_value=False)
             for oid in store.object_ids}
    for t in range(n):
        ms = store_masks(store, t)
        for oid, m in ms.items():
            if m is not None:
                masks[oid][t] = m
        flat = flatten(ms, (h, w), dtype=dtype)
        for oid in flat.hidden:
            log.hide(oid, t)
        labels[t] = flat.labels
        if progress:
            progress(t + 1, n)
    root.attrs["objects"] = {str(o): store.object_meta(o) for o in store.object_ids}
    root.attrs["status"] = {str(o): store.status(o).tolist() for o in store.object_ids}
    root.attrs["status_codes"] = {"0": "not run", "1": "propagated", "2": "prompted", "3": "stale"}
    root.attrs["labels_rule"] = RULE
