"""Acceptance: a real Cell Tracking Challenge sequence with a division, tracked by samtrack (untrained
weights, image size 128, CPU), exported as CTC and checked with py-ctcmetrics' own validator, then
evaluated (SEG, TRA) as a job folder against the ground truth.

The sequence is cut to a window of frames around the division (to stay short on a 2-core CPU); its
ground truth is cut the same way (tracks re-based to the window, parents kept when the parent is in it).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import samtrack
from samtrack.io.export import export
from tests import model_utils as mu
from tests.conftest import shared

def _rows(path) -> list[tuple[int, int, int, int]]:
    return [tuple(map(int, r.split())) for r in path.read_text().splitlines() if r.strip()]


def _find_division(seq):
    """(sequence folder, mother row, daughter rows) of the first CTC sequence here with a division
    whose mother and daughters are all within the frames present."""
    for d in sorted(seq.glob("ctc_*")):
        rows = _rows(d / "01_GT" / "TRA" / "man_track.txt")
        for mother in rows:
            kids = [r for r in rows if r[3] == mother[0]]
            if len(kids) == 2 and mother[2] > mother[1]:
                return d, mother, sorted(kids, key=lambda r: r[1])
    pytest.skip("no CTC sequence with a division in the shared data")


def _window_gt(seq, a: int, b: int, out):
    """Frames a..b of ``seq`` as their own CTC sequence: ``out/01`` (raw) and ``out/01_GT`` (TRA, SEG)."""
    import tifffile

    (out / "01").mkdir(parents=True)
    (out / "01_GT" / "TRA").mkdir(parents=True)
    (out / "01_GT" / "SEG").mkdir()
    for k, t in enumerate(range(a, b + 1)):
        shutil.copy(seq / "01" / f"t{t:03d}.tif", out / "01" / f"t{k:03d}.tif")
        shutil.copy(seq / "01_GT" / "TRA" / f"man_track{t:03d}.tif", out / "01_GT" / "TRA" / f"man_track{k:03d}.tif")
        seg = seq / "01_GT" / "SEG" / f"man_seg{t:03d}.tif"
        if seg.exists():
            shutil.copy(seg, out / "01_GT" / "SEG" / f"man_seg{k:03d}.tif")
    kept = {r[0]: r for r in _rows(seq / "01_GT" / "TRA" / "man_track.txt") if r[2] >= a and r[1] <= b}
    lines = [f"{lab} {max(bg, a) - a} {min(e, b) - a} {p if p in kept else 0}\n" for lab, (_, bg, e, p) in kept.items()]
    (out / "01_GT" / "TRA" / "man_track.txt").write_text("".join(lines))
    for k in range(b - a + 1):  # the window's lineage agrees with its masks (CTC ground-truth rule)
        alive = {lab for lab, (_, bg, e, _) in kept.items() if max(bg, a) - a <= k <= min(e, b) - a}
        present = set(np.unique(tifffile.imread(out / "01_GT" / "TRA" / f"man_track{k:03d}.tif")).tolist()) - {0}
        assert present == alive, k
    return out / "01", out / "01_GT"


def _gt_mask(gt, k: int, label: int) -> np.ndarray:
    """The full cell of TRA track ``label`` on window frame ``k``: the SEG instance under its marker
    when the frame has SEG, else the TRA marker itself (both are ground truth)."""
    import tifffile

    tra = tifffile.imread(gt / "TRA" / f"man_track{k:03d}.tif") == label
    seg_file = gt / "SEG" / f"man_seg{k:03d}.tif"
    if seg_file.exists():
        seg = tifffile.imread(seg_file)
        ids, counts = np.unique(seg[tra], return_counts=True)
        if ids[np.argmax(counts)]:
            return seg == ids[np.argmax(counts)]
    return tra


def test_real_division_tracked_exports_a_valid_ctc_lineage_and_evaluates(tmp_path):
    from ctc_metrics import validate_sequence

    from samtrack.evaluate import ctc_metrics

    seq, mother, (d1, d2) = _find_division(shared("microscopy"))
    a, b = mother[2] - 1, d2[1]  # the mother's last two frames up to the second daughter's first
    src, gt = _window_gt(seq, a, b, tmp_path / "seq")
    n = b - a + 1
    k1, k2 = d1[1] - a, d2[1] - a  # window frames where the daughters begin
    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=128)
    s = samtrack.open_session(src, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "job")
    try:
        m_id, d1_id, d2_id = mother[0], d1[0], d2[0]  # object ids = ground-truth track ids
        s.add_object(m_id, name="mother")
        s.add_object(d1_id, parent=m_id)
        s.add_object(d2_id, parent=m_id)
        s.add_mask(0, m_id, _gt_mask(gt, 0, m_id))
        s.add_mask(k1, d1_id, _gt_mask(gt, k1, d1_id))
        s.add_mask(k2, d2_id, _gt_mask(gt, k2, d2_id))
        # what SAM does at a division: the mother's mask goes on over her daughters (overlapping cells)
        s.add_mask(k1, m_id, _gt_mask(gt, k1 - 1, m_id) | _gt_mask(gt, k1, d1_id))
        list(s.propagate("forward"))  # daughters exist from their first frame on
        s.flush()
        res = s.results
        assert (res.mask(k1, m_id) & res.mask(k1, d1_id)).any()  # the mother overlaps a daughter
        mother_frames = {t for t in range(n) if res.mask(t, m_id).any()}
        rep = export(res, "ctc", tmp_path / "RES", allow_incomplete=True)  # daughters: not run before birth
    finally:
        s.close()

    assert validate_sequence(str(rep.path), threads=1)["Valid"] == 1
    rows = _rows(rep.path / "res_track.txt")
    obj_of = {int(k): v["object"] for k, v in json.loads((rep.path / "samtrack_objects.json").read_text()).items()}
    pieces = {o: sorted((r for r in rows if obj_of[r[0]] == o), key=lambda r: r[1]) for o in (m_id, d1_id, d2_id)}
    # the mother is cut at the frame before her first daughter begins; her masks from then on are dropped
    assert pieces[m_id][0][1] == 0 and all(r[2] <= k1 - 1 for r in pieces[m_id])
    assert set(rep.hidden[m_id]) == {t for t in mother_frames if t >= k1} and k1 in rep.hidden[m_id]
    assert any(w.startswith(f"object {m_id}:") and "mother" in w for w in rep.warnings)
    # each daughter's first track begins at (or after) her birth, with the mother's last track as parent
    assert pieces[d1_id][0][1] == k1 and pieces[d2_id][0][1] >= k2
    for d_id in (d1_id, d2_id):
        first = pieces[d_id][0]
        before = [r for r in pieces[m_id] if r[2] < first[1]]
        assert first[3] == before[-1][0] != 0

    m = ctc_metrics(tmp_path / "job", gt, allow_incomplete=True)
    assert m["valid"] and 0.0 <= m["SEG"] <= 1.0 and 0.0 < m["TRA"] <= 1.0
    # the same through the CLI: only its own output, SEG and TRA as numbers
    import re
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "samtrack.cli", "eval", str(tmp_path / "job"), str(gt),
                        "--allow-incomplete"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    seg = re.search(r"\bSEG (\d\.\d+)", r.stdout)
    tra = re.search(r"\bTRA (\d\.\d+)", r.stdout)
    assert seg and tra, r.stdout
    assert abs(float(tra.group(1)) - m["TRA"]) < 1e-3 and abs(float(seg.group(1)) - m["SEG"]) < 1e-3
    assert "Traceback" not in r.stderr and len(r.stdout.strip().splitlines()) <= 8, r.stdout
