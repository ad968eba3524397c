"""COCO instance JSON: one annotation per object per frame, masks as RLE (pycocotools).

Images are the video's frames (``file_name`` = frame index, zero-padded);
categories are the objects (id = object id, name = object name).
"""
from __future__ import annotations

import json

import numpy as np


def encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ann_fields(rle: dict) -> dict:
    from pycocotools import mask as mask_utils

    r = dict(rle, counts=rle["counts"].encode("ascii"))
    return {"area": float(mask_utils.area(r)), "bbox": [float(v) for v in mask_utils.toBbox(r)]}


def write(store, path, *, progress=None, **_):
    n = store.n_frames
    images, anns = [], []
    cats = [{"id": o, "name": store.object_meta(o)["name"]} for o in store.object_ids]
    for t in range(n):
        images.append({"id": t, "file_name": f"{t:05d}.jpg", "height": store.height, "width": store.width, "frame_index": t})
        for o in store.object_ids:
            m = store.mask(t, o)
            if m is None or not m.any():
                continue
            rle = encode(m)
            anns.append({"id": len(anns) + 1, "image_id": t, "category_id": o, "track_id": o, "segmentation": rle,
                         "iscrowd": 0, **_ann_fields(rle)})
        if progress:
            progress(t + 1, n)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
