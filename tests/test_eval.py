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
