"""YouTube-VIS style JSON: one video, one track per object, a per-frame RLE list (None where absent).

``file_names`` name files that exist (see :mod:`samtrack.io.export.frame_files`;
``frames_dir=`` writes a video's frames); ``timestamps`` (seconds per frame) when known.
"""
from __future__ import annotations

import json

from samtrack.io.export.coco import encode
from samtrack.io.export.frame_files import frame_files, write_frames


def write(store, path, *, log, frames=None, frames_dir=None, force=False, progress=None, **_):
    n = store.n_frames
    files = frame_files(frames, n, log)
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
    video = {"id": 1, "width": store.width, "height": store.height, "length": n, "file_names": list(files.names)}
    if files.times is not None:
        video["timestamps"] = list(files.times)
    anns = [{"id": o, "video_id": 1, "category_id": o, "segmentations": segs[o], "areas": areas[o], "iscrowd": 0}
            for o in store.object_ids]
    cats = [{"id": o, "name": store.object_meta(o)["name"]} for o in store.object_ids]
    write_frames(frames, files, frames_dir, force=force, log=log)
    with open(path, "w") as f:
        json.dump({"videos": [video], "annotations": anns, "categories": cats}, f)
