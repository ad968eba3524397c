"""`samtrack eval`: J&F on the real DAVIS-style annotations, CTC metrics on a real CTC sequence."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from samtrack.evaluate import boundary_f, davis_jf, region_j
from tests.conftest import shared


def _eroded_copy(src, dst, px=1):
    import cv2
    from PIL import Image

    dst.mkdir()
    kept, total = 0, 0
    for f in sorted(src.glob("*.png")):
        im = Image.open(f)
        lab = np.asarray(im)
        out = np.zeros_like(lab)
        for oid in set(np.unique(lab).tolist()) - {0}:
            m = (lab == oid).astype(np.uint8)
            e = cv2.erode(m, np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)
            out[e] = oid
            kept, total = kept + e.sum(), total + m.sum()
        o = Image.fromarray(out, mode="P")
        o.putpalette(im.getpalette())
        o.save(dst / f.name)
    return kept, total


def test_ground_truth_against_itself_is_one():
    gt = shared("vos/xmem2_pumavos_chair/Annotations")
    r = subprocess.run([sys.executable, "-m", "samtrack.cli", "eval", str(gt), str(gt), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["J"] == 1.0 and d["F"] == 1.0 and d["JF"] == 1.0 and set(d["objects"]) == {"1"}


def test_one_pixel_erosion_gives_the_expected_drop(tmp_path):
    gt = shared("vos/xmem2_pumavos_chair/Annotations")
    kept, total = _eroded_copy(gt, tmp_path / "eroded")
    res = davis_jf(tmp_path / "eroded", gt)
    # eroded is inside the ground truth, so each frame's J is |eroded| / |gt| exactly
    from PIL import Image

    per_frame = []
    for f in sorted(gt.glob("*.png")):
        g = np.asarray(Image.open(f)) == 1
        e = np.asarray(Image.open(tmp_path / "eroded" / f.name)) == 1
        per_frame.append(e.sum() / g.sum() if g.any() else 1.0)
    assert res["J"] == pytest.approx(np.mean(per_frame), abs=1e-9)
    assert 0.8 < res["J"] < 0.999
    assert res["F"] > 0.99  # a one-pixel shift is inside the boundary tolerance (7 px here)


def test_boundary_f_detects_a_shift_beyond_tolerance():
    g = np.zeros((100, 100), bool)
    g[20:60, 20:60] = True
    assert boundary_f(g, g) == 1.0
    far = np.roll(g, 15, axis=1)
    assert boundary_f(far, g) < 0.6 and region_j(far, g) == pytest.approx(25 * 40 / (55 * 40))


def test_ctc_metrics_on_real_ground_truth_against_itself(tmp_path):
    import shutil

    seq = shared("microscopy/ctc_Fluo-N2DH-GOWT1_01_t000-t024")
    gt = seq / "01_GT"
    res = tmp_path / "RES"
    res.mkdir()
    for f in sorted((gt / "TRA").glob("man_track*.tif")):
        shutil.copy(f, res / f.name.replace("man_track", "mask"))
    shutil.copy(gt / "TRA" / "man_track.txt", res / "res_track.txt")
    from samtrack.evaluate import ctc_metrics, is_ctc

    assert is_ctc(res, gt)
    m = ctc_metrics(res, gt)
    assert m["valid"] and m["TRA"] == pytest.approx(1.0)


def _ctc_gt_and_job(tmp_path, *, drop=None):
    """A 4-frame CTC ground truth with two cells (2 divides into 3 and 4 at frame 2) and a samtrack job
    folder whose results are the same cells (object ``drop`` left out)."""
    import tifffile

    from samtrack.io.result_store import ResultStore, Status

    n, h, w = 4, 32, 40
    cells = {1: [(2, 10, 2, 10)] * 4, 2: [(14, 26, 14, 30)] * 2, 3: [None, None, (14, 26, 14, 21), (14, 26, 14, 21)],
             4: [None, None, (14, 26, 23, 30), (14, 26, 23, 30)]}
    gt = tmp_path / "01_GT"
    (gt / "TRA").mkdir(parents=True)
    (gt / "SEG").mkdir()
    job = tmp_path / "job"
    rs = ResultStore(job / "results.zarr", n_frames=n, height=h, width=w)
    for o in cells:
        if o != drop:
            rs.add_object(o, parent=2 if o in (3, 4) else None)
    for t in range(n):
        lab = np.zeros((h, w), np.uint16)
        for o, boxes in cells.items():
            m = np.zeros((h, w), bool)
            if t < len(boxes) and boxes[t]:
                y0, y1, x0, x1 = boxes[t]
                m[y0:y1, x0:x1] = True
                lab[m] = o
            if o != drop:
                rs.write(t, o, m, status=Status.PROPAGATED, object_score=1, iou=1, source=0)
        tifffile.imwrite(gt / "TRA" / f"man_track{t:03d}.tif", lab)
        tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", lab)
    rs.flush()
    (gt / "TRA" / "man_track.txt").write_text("1 0 3 0\n2 0 1 0\n3 2 3 2\n4 2 3 2\n")
    return job, gt


def test_ctc_metrics_of_a_job_folder(tmp_path, capsys):
    from samtrack.evaluate import ctc_metrics, is_ctc

    job, gt = _ctc_gt_and_job(tmp_path)
    assert is_ctc(job, gt)
    m = ctc_metrics(job, gt)
    assert m["valid"] and m["SEG"] == pytest.approx(1.0) and m["TRA"] == pytest.approx(1.0)
    assert m["export"]["warnings"] == [] and m["problems"] == []
    job2, gt2 = _ctc_gt_and_job(tmp_path / "b", drop=1)  # one of the four cells is missing on every frame
    m2 = ctc_metrics(job2, gt2)
    # SEG: mean Jaccard over the ground-truth cells of the SEG frames: cell 1 scores 0 on each frame
    assert m2["valid"] and m2["SEG"] == pytest.approx((0 + 1 + 0 + 1 + 0 + 1 + 1 + 0 + 1 + 1) / 10)
    assert m2["TRA"] < 1.0
    assert capsys.readouterr() == ("", "")  # py-ctcmetrics' prints are captured


def test_ctc_metrics_of_a_job_refuses_another_sequence(tmp_path):
    import shutil

    from samtrack.evaluate import EvaluationError, ctc_metrics

    job, gt = _ctc_gt_and_job(tmp_path)
    shutil.copy(gt / "TRA" / "man_track000.tif", gt / "TRA" / "man_track004.tif")
    with pytest.raises(EvaluationError, match="4 mask files.*5"):
        ctc_metrics(job, gt)


def test_davis_jf_of_a_job_folder_flattens_like_the_exports(tmp_path):
    # object 1 (small) lies inside object 2 (large): the ground truth shows both, as annotators draw them
    from PIL import Image

    from samtrack.io.export.png import davis_palette
    from samtrack.io.result_store import ResultStore, Status

    n, h, w = 3, 20, 30
    rs = ResultStore(tmp_path / "job" / "results.zarr", n_frames=n, height=h, width=w)
    rs.add_object(1)
    rs.add_object(2)
    (tmp_path / "gt").mkdir()
    for t in range(n):
        small, large = np.zeros((h, w), bool), np.zeros((h, w), bool)
        small[5:9, 5 + t:9 + t], large[2:16, 2:24] = True, True
        rs.write(t, 1, small, status=Status.PROPAGATED, object_score=1, iou=1, source=0)
        rs.write(t, 2, large, status=Status.PROPAGATED, object_score=1, iou=1, source=0)
        lab = np.where(small, 1, np.where(large, 2, 0)).astype(np.uint8)
        im = Image.fromarray(lab, mode="P")
        im.putpalette(davis_palette())
        im.save(tmp_path / "gt" / f"{t:05d}.png")
    rs.flush()
    res = davis_jf(tmp_path / "job", tmp_path / "gt")
    assert res["objects"]["1"]["J"] == 1.0 and res["objects"]["2"]["J"] == 1.0
