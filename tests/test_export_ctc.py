"""Cell Tracking Challenge export: every folder passes py-ctcmetrics' own validator and the CTC rules
checked here by hand (labels 1..65535, every listed track on every frame of its span, parents end
before their children begin, zlib-compressed uint16 masks)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from samtrack.io.export import ExportError, export
from samtrack.io.result_store import ResultStore, Status

T, H, W = 6, 24, 33


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


EMPTY = np.zeros((H, W), bool)


def _store(tmp_path, objects: dict, masks, n=T) -> ResultStore:
    """``objects``: {id: parent or None}; ``masks(t, id)`` -> (H, W) bool."""
    rs = ResultStore(tmp_path / "r.zarr", n_frames=n, height=H, width=W)
    for o, p in objects.items():
        rs.add_object(o, parent=p)
    for t in range(n):
        for o in objects:
            rs.write(t, o, masks(t, o), status=Status.PROPAGATED, object_score=1, iou=1, source=0)
    return rs


def _read(d, n=T):
    import tifffile

    rows = sorted(tuple(map(int, r.split())) for r in (d / "res_track.txt").read_text().splitlines() if r.strip())
    masks = [tifffile.imread(d / f"mask{t:03d}.tif") for t in range(n)]
    return rows, masks


def _ctc_problems(rows, masks) -> list[str]:
    """The CTC format's rules, written from its specification (not from the exporter)."""
    spans = {lab: (b, e, p) for lab, b, e, p in rows}
    out = []
    if len(spans) != len(rows):
        out.append("labels not unique")
    for lab, (b, e, p) in spans.items():
        if not 1 <= lab <= 65535 or b > e:
            out.append(f"bad row {lab} {b} {e} {p}")
        out += [f"track {lab} absent from frame {t}" for t in range(b, e + 1) if not (masks[t] == lab).any()]
        if p and (p not in spans or spans[p][1] >= b):
            out.append(f"track {lab} begins at {b}, its parent {p} does not end before")
    for t, m in enumerate(masks):
        if m.dtype != np.uint16:
            out.append(f"frame {t} is {m.dtype}")
        out += [f"frame {t}: label {lab} outside res_track" for lab in set(np.unique(m).tolist()) - {0}
                if lab not in spans or not spans[lab][0] <= t <= spans[lab][1]]
    return out


def _validator(d) -> int:
    from ctc_metrics import validate_sequence

    return validate_sequence(str(d), threads=1)["Valid"]


def test_large_sparse_ids_are_renumbered_into_16_bits(tmp_path):
    # case 09: ids carried over from another tracker, 7 and 70000
    rs = _store(tmp_path, {7: None, 70000: None},
                lambda t, o: _box(2, 8, 2 + t, 8 + t) if o == 7 else _box(12, 20, 20, 28))
    rep = export(rs, "ctc", tmp_path / "ctc")
    rows, masks = _read(rep.path)
    assert rows == [(1, 0, T - 1, 0), (2, 0, T - 1, 0)]  # ascending ids -> 1, 2
    assert (masks[3][2:8, 5:11] == 1).all() and (masks[3][12:20, 20:28] == 2).all()
    assert _ctc_problems(rows, masks) == [] and _validator(rep.path) == 1
    mapping = json.loads((rep.path / "samtrack_objects.json").read_text())
    assert mapping["1"]["object"] == 7 and mapping["2"]["object"] == 70000


def test_a_small_cell_inside_a_large_one_keeps_its_track(tmp_path):
    # case 10: object 1 (small) lies inside object 2 (large) on every frame
    rs = _store(tmp_path, {1: None, 2: None},
                lambda t, o: _box(6, 10, 8 + t, 12 + t) if o == 1 else _box(2, 18, 2 + t, 26 + t))
    rep = export(rs, "ctc", tmp_path / "ctc")
    rows, masks = _read(rep.path)
    assert rows == [(1, 0, T - 1, 0), (2, 0, T - 1, 0)]
    for t in range(T):
        assert (masks[t][6:10, 8 + t:12 + t] == 1).all()
        assert (masks[t] == 2).sum() == 16 * 24 - 16
    assert rep.hidden == {} and _ctc_problems(rows, masks) == [] and _validator(rep.path) == 1


def test_frames_where_flattening_hides_an_object_split_its_track(tmp_path):
    # object 3 (6x6) is covered by two smaller objects 4 and 5 on frames 2-3 only
    def masks(t, o):
        if o == 3:
            return _box(10, 16, 20, 26)
        if t in (2, 3):
            return _box(10, 16, 20, 23) if o == 4 else _box(10, 16, 23, 26)
        return _box(0, 3, 3 * o, 3 * o + 3)
    rs = _store(tmp_path, {3: None, 4: None, 5: None}, masks)
    rep = export(rs, "ctc", tmp_path / "ctc")
    rows, masks_ = _read(rep.path)
    # object 3 -> label 1 on 0-1, hidden on 2-3, back as label 4 (next free label, parent 1) on 4-5
    assert rows == [(1, 0, 1, 0), (2, 0, 5, 0), (3, 0, 5, 0), (4, 4, 5, 1)]
    assert rep.hidden == {3: (2, 3)} and any(w.startswith("object 3:") for w in rep.warnings)
    assert _ctc_problems(rows, masks_) == [] and _validator(rep.path) == 1


def test_gaps_split_tracks_and_the_mother_ends_before_her_daughters(tmp_path):
    # object 1 vanishes on frames 2-3 and comes back on 4-5, where its daughter 2 begins
    rs = _store(tmp_path, {1: None, 2: 1}, lambda t, o: (_box(2, 8, 2, 8) if t not in (2, 3) else EMPTY) if o == 1
                else (_box(12, 20, 12, 20) if t >= 4 else EMPTY))
    rep = export(rs, "ctc", tmp_path / "ctc")
    rows, masks = _read(rep.path)
    assert rows == [(1, 0, 1, 0), (2, 4, 5, 1)]  # the mother's masks on 4-5 are dropped
    assert rep.hidden == {1: (4, 5)} and any("mother" in w and "4-5" in w for w in rep.warnings)
    assert not (masks[4] == 1).any() and _ctc_problems(rows, masks) == [] and _validator(rep.path) == 1


def test_division_with_the_mother_overlapping_a_daughter(tmp_path):
    # case 11: mother 1 still masked on frames 2-3 where daughters 2 and 3 (parent 1) begin,
    # overlapping daughter 2 there
    def masks(t, o):
        if t < 2:
            return _box(4, 16, 6, 24) if o == 1 else EMPTY
        return {1: _box(4, 16, 6, 16), 2: _box(4, 16, 12, 20), 3: _box(4, 16, 22, 30)}[o]
    rs = _store(tmp_path, {1: None, 2: 1, 3: 1}, masks, n=4)
    rep = export(rs, "ctc", tmp_path / "ctc")
    rows, m = _read(rep.path, n=4)
    assert rows == [(1, 0, 1, 0), (2, 2, 3, 1), (3, 2, 3, 1)]
    assert rep.hidden == {1: (2, 3)}
    assert (m[2][4:16, 12:20] == 2).all() and not (m[2] == 1).any()  # the mother no longer covers the daughter
    assert _ctc_problems(rows, m) == [] and _validator(rep.path) == 1


def test_a_parent_with_no_earlier_frame_becomes_parent_0_with_a_warning(tmp_path):
    # object 2 names 1 as parent but begins on frame 0 with it; object 3 names an object that does not exist
    rs = _store(tmp_path, {1: None, 2: 1, 3: 9},
                lambda t, o: _box(2, 6, 4 * o, 4 * o + 3))
    rep = export(rs, "ctc", tmp_path / "ctc")
    rows, masks = _read(rep.path)
    assert rows == [(1, 0, T - 1, 0), (2, 0, T - 1, 0), (3, 0, T - 1, 0)]
    assert any(w.startswith("object 2:") and "parent 0" in w for w in rep.warnings)
    assert any(w.startswith("object 3:") and "9" in w for w in rep.warnings)
    assert rep.hidden == {} and _validator(rep.path) == 1


def test_an_empty_result_is_an_empty_ctc_folder(tmp_path):
    rs = _store(tmp_path, {1: None}, lambda t, o: EMPTY)
    rep = export(rs, "ctc", tmp_path / "ctc")
    rows, masks = _read(rep.path)
    assert rows == [] and (rep.path / "res_track.txt").read_text() == ""
    assert len(masks) == T and all(m.dtype == np.uint16 and not m.any() for m in masks)
    assert any("empty" in w for w in rep.warnings)
    rs2 = ResultStore(tmp_path / "r2.zarr", n_frames=T, height=H, width=W)  # no objects at all
    rep2 = export(rs2, "ctc", tmp_path / "ctc2")
    assert _read(rep2.path)[0] == [] and rep2.warnings


def test_masks_are_zlib_compressed_uint16(tmp_path):
    import tifffile

    rs = _store(tmp_path, {1: None}, lambda t, o: _box(2, 8, 2, 8))
    d = export(rs, "ctc", tmp_path / "ctc").path
    with tifffile.TiffFile(d / "mask000.tif") as tf:
        page = tf.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and page.dtype == np.uint16
        assert page.shape == (H, W)


def test_too_many_tracks_fail_and_leave_nothing(tmp_path, monkeypatch):
    from samtrack.io.export import ctc

    monkeypatch.setattr(ctc, "MAX_LABEL", 2)
    # one object blinking: 3 pieces -> 3 labels > 2
    rs = _store(tmp_path, {1: None}, lambda t, o: _box(2, 8, 2, 8) if t % 2 == 0 else EMPTY)
    with pytest.raises(ExportError, match="16-bit"):
        export(rs, "ctc", tmp_path / "ctc")
    assert not (tmp_path / "ctc").exists() and not list(tmp_path.glob(".ctc*"))
