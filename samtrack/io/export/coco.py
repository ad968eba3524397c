"""COCO instance JSON: one annotation per object per frame, masks as RLE (pycocotools).

Images are the video's frames: ``file_name`` names a file that exists (see
:mod:`samtrack.io.export.frame_files`; ``frames_dir=`` writes a video's frames),
``frame_index`` and ``timestamp`` (seconds, when known); categories are the
objects (id = object id, name = object name). Masks overlap as the objects do
(COCO instances may overlap).
"""
from __future__ import annotations

import json

import numpy as np

from samtrack.io.export.frame_files import frame_files, write_frames


def encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ann_fields(rle: dict) -> dict:
    from pycocotools import mask as mask_utils

    r = dict(rle, counts=rle["counts"].encode("ascii"))
    return {"area": float(mask_utils.area(r)), "bbox": [float(v) for v in mask_utils.toBbox(r)]}


def image_record(t: int, files, store) -> dict:
    rec = {"id": t, "file_name": files.names[t], "height": store.height, "width": store.width, "frame_index": t}
    if files.times is not None:
        rec["timestamp"] = files.times[t]
    return rec


def write(store, path, *, log, frames=None, frames_dir=None, force=False, progress=None, **_):
    n = store.n_frames
    files = frame_files(frames, n, log)
    images, anns = [], []
    cats = [{"id": o, "name": store.object_meta(o)["name"]} for o in store.object_ids]
    for t in range(n):
        images.append(image_record(t, files, store))
        for o in store.object_ids:
            m = store.mask(t, o)
            if m is None or not m.any():
                continue
            rle = encode(m)
            anns.append({"id": len(anns) + 1, "image_id": t, "category_id": o, "track_id": o, "segmentation": rle,
                         "iscrowd": 0, **_ann_fields(rle)})
        if progress:
            progress(t + 1, n)
    write_frames(frames, files, frames_dir, force=force, log=log)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
