"""Exports keep the source's time and frame names: the mp4 overlay's frame timestamps (decoded back
with PyAV), the TIFF frame interval (read back by tifffile as ImageJ metadata), COCO / YouTube-VIS
file names that exist and per-frame timestamps (loaded with pycocotools' COCO reader)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from samtrack.io.export import ExportError, export
from samtrack.io.info import VideoInfo
from samtrack.io.result_store import ResultStore, Status

T, H, W = 6, 48, 64
VFR_S = [0.0, 0.040, 0.060, 0.200, 0.210, 0.500]  # case 16


class FakeFrames:
    """What exports use of a FrameStore: ``info``, ``source``, ``iter_frames()``, and optionally
    ``timestamps()`` / ``frame_names()`` (frame i is grey 30 + 40 i)."""

    def __init__(self, source="/data/clip.mp4", *, fps=None, times=None, names=None, methods=True):
        self.source = source
        self.info = VideoInfo(n_frames=T, height=H, width=W, fps=fps, dtype="uint8", channels=3)
        self._times, self._names = times, names
        if not methods:
            self.timestamps = self.frame_names = None

    def timestamps(self):
        return None if self._times is None else np.asarray(self._times, np.float64)

    def frame_names(self):
        return self._names

    def iter_frames(self):
        for t in range(T):
            yield t, np.full((H, W, 3), 30 + 40 * t, np.uint8)


@pytest.fixture
def store(tmp_path):
    rs = ResultStore(tmp_path / "r.zarr", n_frames=T, height=H, width=W)
    rs.add_object(1)
    for t in range(T):
        m = np.zeros((H, W), bool)
        m[10:30, 10 + t:30 + t] = True
        rs.write(t, 1, m, status=Status.PROPAGATED, object_score=1, iou=1, source=0)
    return rs


def _decoded_times(path):
    import av

    with av.open(str(path)) as c:
        return [(float(f.time), float(f.to_ndarray(format="rgb24")[40:, 40:].mean())) for f in c.decode(video=0)]


def test_mp4_overlay_keeps_variable_frame_timestamps(store, tmp_path):
    rep = export(store, "mp4", tmp_path / "o.mp4", frames=FakeFrames(fps=12.0, times=VFR_S))
    got = _decoded_times(rep.path)
    assert len(got) == T
    np.testing.assert_allclose([t for t, _ in got], VFR_S, atol=1e-4)
    for i, (_, grey) in enumerate(got):  # frame i is still frame i
        assert abs(grey - (30 + 40 * i)) < 12


def test_mp4_overlay_without_timestamps_uses_the_declared_rate(store, tmp_path):
    rep = export(store, "mp4", tmp_path / "o.mp4", frames=FakeFrames(fps=4.0, methods=False))
    np.testing.assert_allclose([t for t, _ in _decoded_times(rep.path)], np.arange(T) / 4.0, atol=1e-4)


def test_mp4_overlay_of_a_real_vfr_video(store, tmp_path):
    import av

    import samtrack
    from tests import media

    vid = media.write_video(tmp_path / "vfr.mp4", T, w=W, h=H, pts_ms=[int(s * 1000) for s in VFR_S])
    with av.open(str(vid)) as c:
        src = [float(f.time) for f in c.decode(video=0)]
    with samtrack.open_video(vid, workdir=tmp_path / "w") as fs:
        if not callable(getattr(fs, "timestamps", None)):
            pytest.skip("FrameStore.timestamps() not available yet")
        rep = export(store, "mp4", tmp_path / "o.mp4", frames=fs)
    np.testing.assert_allclose([t for t, _ in _decoded_times(rep.path)], src, atol=1e-4)


def test_tiff_carries_the_frame_interval(store, tmp_path):
    import tifffile

    rep = export(store, "tiff", tmp_path / "a.tif", frames=FakeFrames(fps=4.0, methods=False))
    with tifffile.TiffFile(rep.path) as tf:
        md = tf.imagej_metadata
        assert md["finterval"] == pytest.approx(0.25) and md["tunit"] == "sec" and md["frames"] == T
    assert rep.warnings == ()
    rep = export(store, "tiff", tmp_path / "b.tif", frames=FakeFrames(fps=12.0, times=VFR_S))
    with tifffile.TiffFile(rep.path) as tf:
        assert tf.imagej_metadata["finterval"] == pytest.approx(0.1)  # (0.5 - 0) / 5: the mean interval
    assert any("varies" in w for w in rep.warnings)
    rep = export(store, "tiff", tmp_path / "c.tif", frames=FakeFrames(fps=None, methods=False))
    with tifffile.TiffFile(rep.path) as tf:
        assert "finterval" not in tf.imagej_metadata  # unknown timing is not invented


def _coco(path):
    from pycocotools.coco import COCO

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while loading
        return COCO(str(path))


def test_coco_names_the_image_folder_files_with_timestamps(store, tmp_path):
    names = [f"img_{k}.png" for k in (1, 2, 10, 11, 20, 100)]
    rep = export(store, "coco", tmp_path / "c.json", frames=FakeFrames("/data/folder", times=np.arange(T) * 0.5,
                                                                       names=names))
    c = _coco(rep.path)
    imgs = [c.imgs[i] for i in sorted(c.imgs)]
    assert [im["file_name"] for im in imgs] == names
    assert [im["timestamp"] for im in imgs] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    m = c.annToMask(c.loadAnns(c.getAnnIds(imgIds=[3]))[0]).astype(bool)
    np.testing.assert_array_equal(m, store.mask(3, 1))
    assert rep.warnings == ()


def test_coco_of_a_video_writes_the_frames_it_names(store, tmp_path):
    from PIL import Image

    fr = FakeFrames("/data/my clip.mp4", times=VFR_S)
    rep = export(store, "coco", tmp_path / "c.json", frames=fr, frames_dir=tmp_path)
    c = _coco(rep.path)
    imgs = [c.imgs[i] for i in sorted(c.imgs)]
    assert [im["file_name"] for im in imgs] == [f"my clip/{i:06d}.jpg" for i in range(T)]
    assert [im["timestamp"] for im in imgs] == VFR_S
    for i, im in enumerate(imgs):
        with Image.open(tmp_path / im["file_name"]) as f:
            assert f.size == (W, H) and abs(np.asarray(f).mean() - (30 + 40 * i)) < 3
    # the frames folder is an output too: not replaced without force
    with pytest.raises(ExportError, match="force"):
        export(store, "coco", tmp_path / "d.json", frames=fr, frames_dir=tmp_path)
    assert not (tmp_path / "d.json").exists()
    export(store, "coco", tmp_path / "d.json", frames=fr, frames_dir=tmp_path, force=True)


def test_coco_of_a_video_without_frames_dir_warns_that_names_name_no_file(store, tmp_path):
    rep = export(store, "coco", tmp_path / "c.json", frames=FakeFrames("/data/clip.mp4", times=VFR_S))
    assert json.loads(rep.path.read_text())["images"][0]["file_name"] == "clip/000000.jpg"
    assert any("frames_dir" in w for w in rep.warnings) and not (tmp_path / "clip").exists()


def test_ytvis_names_frames_and_carries_timestamps(store, tmp_path):
    from pycocotools import mask as mask_utils

    rep = export(store, "ytvis", tmp_path / "y.json", frames=FakeFrames("/data/clip.mp4", times=VFR_S),
                 frames_dir=tmp_path)
    v = json.loads(rep.path.read_text())["videos"][0]
    assert v["file_names"] == [f"clip/{i:06d}.jpg" for i in range(T)] and v["timestamps"] == VFR_S
    assert all((tmp_path / f).is_file() for f in v["file_names"])
    seg = json.loads(rep.path.read_text())["annotations"][0]["segmentations"][2]
    np.testing.assert_array_equal(mask_utils.decode(dict(seg, counts=seg["counts"].encode())).astype(bool),
                                  store.mask(2, 1))


def test_image_folder_source_names_with_a_real_frame_store(store, tmp_path):
    import samtrack
    from tests import media

    stems = ["b_1", "b_2", "b_10", "b_11", "b_20", "b_100"]  # natural order
    media.write_image_folder(tmp_path / "imgs", stems, w=W, h=H)
    names = [s + ".png" for s in stems]
    with samtrack.open_video(tmp_path / "imgs", workdir=tmp_path / "w") as fs:
        if not callable(getattr(fs, "frame_names", None)):
            pytest.skip("FrameStore.frame_names() not available yet")
        rep = export(store, "coco", tmp_path / "c.json", frames=fs)
    imgs = json.loads(Path(rep.path).read_text())["images"]
    assert [im["file_name"] for im in imgs] == names
    assert all((tmp_path / "imgs" / im["file_name"]).is_file() for im in imgs)
