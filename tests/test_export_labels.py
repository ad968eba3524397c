"""One flattening rule for every label export: the smaller object on top, hidden objects reported.

Each format is read back with its own reader (tifffile, Pillow, numpy, zarr)."""
from __future__ import annotations

import numpy as np
import pytest

from samtrack.io.export import ExportReport, export
from samtrack.io.export.labels import flatten
from samtrack.io.result_store import ResultStore, Status

T, H, W = 3, 20, 30


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _write(rs, t, oid, m):
    rs.write(t, oid, m, status=Status.PROPAGATED, object_score=1, iou=1, source=0)


@pytest.fixture
def nested(tmp_path):
    """Object 1: a small cell (4x4) inside object 2, a large one (12x12), on every frame; object 3: a
    6x6 cell that objects 4 and 5 (two 6x3 halves, smaller) cover entirely on frame 1 only."""
    rs = ResultStore(tmp_path / "r.zarr", n_frames=T, height=H, width=W)
    for o in (1, 2, 3, 4, 5):
        rs.add_object(o)
    for t in range(T):
        _write(rs, t, 1, _box(4, 8, 4, 8))
        _write(rs, t, 2, _box(0, 12, 0, 12))
        _write(rs, t, 3, _box(10, 16, 20, 26))
        _write(rs, t, 4, _box(10, 16, 20, 23) if t == 1 else _box(0, 6, 24, 27))  # 18 px
        _write(rs, t, 5, _box(10, 16, 23, 26) if t == 1 else np.zeros((H, W), bool))
    return rs


def _expected(t):
    """Drawn by hand: 2 (large), then 1 inside it; 3, then on frame 1 its two halves 4 and 5."""
    lab = np.zeros((H, W), np.uint16)
    lab[0:12, 0:12] = 2
    lab[4:8, 4:8] = 1
    lab[10:16, 20:26] = 3
    if t == 1:
        lab[10:16, 20:23] = 4
        lab[10:16, 23:26] = 5
    else:
        lab[0:6, 24:27] = 4
    return lab


def _read(fmt, path):
    if fmt == "tiff":
        import tifffile

        return tifffile.imread(path)
    if fmt == "png":
        from PIL import Image

        return np.stack([np.asarray(Image.open(f)) for f in sorted(path.glob("*.png"))])
    if fmt == "npy":
        return np.load(path)
    import zarr

    return zarr.open_group(path, mode="r")["labels"][:]


@pytest.mark.parametrize("fmt", ["tiff", "png", "npy", "zarr"])
def test_label_exports_put_the_smaller_object_on_top_and_report_hidden(nested, tmp_path, fmt):
    rep = export(nested, fmt, tmp_path / f"out.{fmt}")
    assert isinstance(rep, ExportReport) and rep.path == tmp_path / f"out.{fmt}"
    assert (rep.frames, rep.objects, rep.format) == (T, 5, fmt)
    got = _read(fmt, rep.path)
    for t in range(T):
        np.testing.assert_array_equal(got[t], _expected(t))
    assert rep.hidden == {3: (1,)}
    assert any(w.startswith("object 3:") and "1" in w for w in rep.warnings)


def test_equal_areas_put_the_lower_id_on_top():
    a, b = _box(0, 4, 0, 4), _box(2, 6, 2, 6)  # 16 px each, overlapping on 2x2
    flat = flatten({9: a, 3: b}, (H, W))
    assert flat.labels[3, 3] == 3 and flat.labels[0, 0] == 9 and flat.labels[5, 5] == 3
    assert flat.visible == (3, 9) and flat.hidden == ()


def test_a_small_object_inside_a_large_one_stays_visible_whatever_the_ids():
    small, large = _box(4, 6, 4, 6), _box(0, 10, 0, 10)
    for ids in ((1, 2), (2, 1), (70000, 7)):
        flat = flatten({ids[0]: small, ids[1]: large}, (H, W))
        assert flat.labels[5, 5] == ids[0] and flat.labels[0, 0] == ids[1] and flat.hidden == ()
    assert flatten({70000: small, 7: large}, (H, W)).labels.dtype == np.uint32


def test_export_of_an_empty_result_writes_empty_labels_with_a_warning(tmp_path, caplog):
    rs = ResultStore(tmp_path / "r.zarr", n_frames=T, height=H, width=W)
    with caplog.at_level("WARNING", logger="samtrack.io.export"):
        rep = export(rs, "tiff", tmp_path / "e.tif")
    import tifffile

    got = tifffile.imread(rep.path)
    assert got.shape == (T, H, W) and not got.any()
    assert rep.objects == 0 and rep.hidden == {} and any("no objects" in w for w in rep.warnings)
    assert any("no objects" in r.getMessage() for r in caplog.records)  # logged, not printed


def test_export_prints_nothing(nested, tmp_path, capsys):
    export(nested, "npy", tmp_path / "l.npy")
    assert capsys.readouterr() == ("", "")
