"""YouTube-VIS style JSON: one video, one track per object, a per-frame RLE list (None where absent)."""
from __future__ import annotations

import json

from samtrack.io.export.coco import encode


def write(store, path, *, progress=None, **_):
    n = store.n_frames
    segs = {o: [] for o in store.object_ids}
    areas = {o: [] for o in store.object_ids}
    for t in range(n):
        for o in store.object_ids:
            m = store.mask(t, o)
            ok = m is not None and m.any()
            segs[o].append(encode(m) if ok else None)
            areas[o].append(float(m.sum()) if ok else None)
        if progress:
            progress(t + 1, n)
    video = {"id": 1, "width": store.width, "height": store.height, "length": n,
             "file_names": [f"{t:05d}.jpg" for t in range(n)]}
    anns = [{"id": o, "video_id": 1, "category_id": o, "segmentations": segs[o], "areas": areas[o], "iscrowd": 0}
            for o in store.object_ids]
    cats = [{"id": o, "name": store.object_meta(o)["name"]} for o in store.object_ids]
    with open(path, "w") as f:
        json.dump({"videos": [video], "annotations": anns, "categories": cats}, f)
