"""Exports: written atomically, read back with each format's own reader, compared exactly."""
from __future__ import annotations

import numpy as np
import pytest

from samtrack.io.export import ExportError, export
from samtrack.io.result_store import ResultStore, Status

T, H, W = 6, 24, 33


SIZES = {1: 10, 2: 6, 5: 8}  # square side per object: areas 100, 36, 64
ON_TOP_LAST = (1, 5, 2)  # the flattening rule drawn by hand: largest first, so the smallest ends on top


def _store(tmp_path, *, complete=True, ids=(1, 2, 5)) -> tuple[ResultStore, np.ndarray]:
    rs = ResultStore(tmp_path / "results.zarr", n_frames=T, height=H, width=W)
    labels = np.zeros((T, H, W), np.uint16)
    rng = np.random.default_rng(0)
    masks = {}
    for k, oid in enumerate(ids):
        rs.add_object(oid, name=f"obj{oid}")
        side = SIZES.get(oid, 8)
        for t in range(T):
            m = np.zeros((H, W), bool)
            y, x = rng.integers(0, H - side), rng.integers(0, W - side)
            m[y:y + side, x:x + side] = True
            if not complete and oid == ids[0] and t == 3:
                continue
            rs.write(t, oid, m, status=Status.PROPAGATED, object_score=1.0, iou=0.9, source=0)
            masks[t, oid] = m
    order = [o for o in ON_TOP_LAST if o in ids] + [o for o in ids if o not in ON_TOP_LAST]
    for (t, oid) in sorted(masks, key=lambda k: (k[0], order.index(k[1]))):
        labels[t][masks[t, oid]] = oid
    return rs, labels


def test_tiff_roundtrip_is_imagej_time_series(tmp_path):
    import tifffile

    rs, labels = _store(tmp_path)
    p = export(rs, "tiff", tmp_path / "labels.tif").path
    with tifffile.TiffFile(p) as tf:
        assert tf.is_imagej and tf.series[0].axes == "TYX" and tf.imagej_metadata["frames"] == T
        np.testing.assert_array_equal(tf.asarray(), labels)


def test_png_palette_roundtrip(tmp_path):
    from PIL import Image

    rs, labels = _store(tmp_path)
    d = export(rs, "png", tmp_path / "png").path
    files = sorted(d.glob("*.png"))
    assert len(files) == T
    for t, f in enumerate(files):
        im = Image.open(f)
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), labels[t])


def test_png_refuses_ids_over_255(tmp_path):
    rs, _ = _store(tmp_path, ids=(1, 300))
    with pytest.raises(ExportError, match="255"):
        export(rs, "png", tmp_path / "png")
    assert not (tmp_path / "png").exists()  # nothing half-written is left behind


def test_npy_and_zarr_roundtrip(tmp_path):
    import zarr

    rs, labels = _store(tmp_path)
    np.testing.assert_array_equal(np.load(export(rs, "npy", tmp_path / "l.npy").path), labels)
    g = zarr.open_group(export(rs, "zarr", tmp_path / "l.zarr").path, mode="r")
    np.testing.assert_array_equal(g["labels"][:], labels)
    for oid in (1, 2, 5):
        np.testing.assert_array_equal(g["masks"][str(oid)][:], np.stack([rs.mask(t, oid) for t in range(T)]))
    assert g.attrs["objects"]["5"]["name"] == "obj5"


def test_mp4_overlay_decodes(tmp_path):
    import av

    import samtrack
    from tests import media

    rs, _ = _store(tmp_path)
    vid = media.write_video(tmp_path / "v.mp4", T, w=W, h=H, pix_fmt="yuv444p")
    with samtrack.open_video(vid, workdir=tmp_path / "w") as fs:
        p = export(rs, "mp4", tmp_path / "o.mp4", frames=fs).path
    with av.open(str(p)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == T and frames[0].shape[:2] == (H + H % 2, W + W % 2)


def test_incomplete_frames_stop_the_export(tmp_path):
    rs, _ = _store(tmp_path, complete=False)
    with pytest.raises(ExportError, match=r"object 1: frames 3"):
        export(rs, "npy", tmp_path / "l.npy")
    rs.set_status(2, [4], Status.STALE)
    with pytest.raises(ExportError, match=r"object 2: frames 4"):
        export(rs, "npy", tmp_path / "l.npy")
    out = np.load(export(rs, "npy", tmp_path / "l.npy", allow_incomplete=True).path)
    assert not (out[3] == 1).any()


def test_existing_output_needs_force(tmp_path):
    rs, labels = _store(tmp_path)
    p = tmp_path / "l.npy"
    p.write_bytes(b"precious")
    with pytest.raises(ExportError, match="force"):
        export(rs, "npy", p)
    assert p.read_bytes() == b"precious"
    export(rs, "npy", p, force=True)
    np.testing.assert_array_equal(np.load(p), labels)


def test_coco_and_ytvis_decode_with_pycocotools(tmp_path):
    import json

    from pycocotools import mask as mask_utils

    rs, _ = _store(tmp_path)
    coco = json.loads(export(rs, "coco", tmp_path / "c.json").path.read_text())
    assert len(coco["annotations"]) == 3 * T and {c["id"] for c in coco["categories"]} == {1, 2, 5}
    for a in coco["annotations"]:
        rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), rs.mask(a["image_id"], a["category_id"]))
    yv = json.loads(export(rs, "ytvis", tmp_path / "y.json").path.read_text())
    assert yv["videos"][0]["length"] == T
    for a in yv["annotations"]:
        for t, seg in enumerate(a["segmentations"]):
            np.testing.assert_array_equal(mask_utils.decode(dict(seg, counts=seg["counts"].encode())).astype(bool),
                                          rs.mask(t, a["id"]))
