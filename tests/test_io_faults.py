"""Inputs and faults from INPUTS-AND-FAULTS.md items 1-12, on generated media."""
from __future__ import annotations

import numpy as np
import pytest

from samtrack.errors import (AmbiguousAxesError, CorruptSourceError, EmptySourceError, FrameIndexError,
                             InvalidOptionError, MixedFrameSizeError, SamtrackError, UnsupportedSourceError)
from samtrack.io import open_video
from samtrack.io.registry import open_reader
from tests import media


def test_vfr_frames_are_indexed_by_order_not_time(videos):
    with open_reader(videos["vfr"]) as r:
        assert r.info.n_frames == 40
        # durations of 20..90 ms: t * fps would skip and repeat frames; order never does
        for i in [39, 0, 17, 18, 5, 38]:
            assert media.read_index(r.read_raw(i)) == i
        assert 10 < r.info.fps < 50


def test_rotation_metadata_is_applied(videos):
    with open_reader(videos["rot90"]) as r:
        assert r.info.rotation == 90
        assert (r.info.height, r.info.width) == (96, 64)  # displayed, not coded (64 high x 96 wide)
        frame = r.read_raw(5)
        assert frame.shape == (96, 64, 3)
        want = media.frame_pattern(5, 96, 64)
        assert np.abs(frame.astype(int) - want).mean() < 6
        assert media.read_index(frame) == 5


def test_faststart_mp4_cut_in_half_keeps_decodable_frames(videos, tmp_path):
    cut = media.truncate(videos["faststart"], tmp_path / "cut.mp4", 0.5)
    with open_reader(cut) as r:
        n = r.info.n_frames
        assert 5 < n < 60
        assert any("truncated" in note and f"{n} of 60" in note for note in r.info.notes)
        frames = list(r.iter_raw())  # every frame it reports decodes, and is the right one
        assert [media.read_index(f) for f in frames] == list(range(n))


def test_non_faststart_mp4_cut_in_half_is_a_clear_error(videos, tmp_path):
    cut = media.truncate(videos["moov_end"], tmp_path / "cut.mp4", 0.5)
    with pytest.raises(CorruptSourceError) as e:
        open_reader(cut)
    assert e.value.usable_frames == 0
    assert "moov" in str(e.value)


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 20)
    with pytest.raises(SamtrackError):
        open_reader(p)


@pytest.mark.parametrize("pix_fmt,color_range", [("yuvj420p", 2), ("yuv420p", 2), ("yuv420p", 1), ("yuv420p10le", 1), ("yuv444p", 1), ("yuv422p", 1)])
def test_pixel_formats_and_colour_range_keep_levels(tmp_path, pix_fmt, color_range):
    # near-black and near-white: a full-range source decoded as limited range clips them
    levels = [(6, 6, 6), (249, 249, 249), (200, 40, 90)]
    frames = [np.full((48, 64, 3), lv, np.uint8) for lv in levels]
    p = media.write_video(tmp_path / f"{pix_fmt}.mp4", 3, w=64, h=48, pix_fmt=pix_fmt, frames=frames,
                          color_range=color_range, bframes=False)
    with open_reader(p) as r:
        for i, lv in enumerate(levels):
            got = r.read_raw(i)[8:40, 8:56].reshape(-1, 3).mean(0)
            tol = 3.0 if i < 2 else 6.0  # chroma subsampling blurs saturated colour slightly
            assert np.abs(got - lv).max() <= tol, f"{pix_fmt} range {color_range}: {got} vs {lv}"


def test_odd_frame_size(videos):
    with open_reader(videos["odd"]) as r:
        assert (r.info.height, r.info.width) == (75, 101)
        assert r.read_raw(19).shape == (75, 101, 3)


def test_header_frame_count_is_not_trusted(videos):
    import av

    with av.open(str(videos["mkv"])) as c:
        assert c.streams.video[0].frames == 0  # Matroska carries no count: the scan decides
    with open_reader(videos["mkv"]) as r:
        assert r.info.n_frames == 30


def test_image_folder_natural_sort(tmp_path):
    names = ["frame10", "frame2", "frame1", "Frame3"]
    media.write_image_folder(tmp_path / "f", names)
    with open_reader(tmp_path / "f") as r:
        got = [media.read_index(r.read_raw(i)) for i in range(4)]
    # natural order: frame1, frame2, Frame3, frame10 -> written as k = 2, 1, 3, 0
    assert got == [2, 1, 3, 0]
    assert [p.name for p in r.files] == ["frame1.png", "frame2.png", "Frame3.png", "frame10.png"]


def test_folder_with_one_wrong_sized_image_names_it(tmp_path):
    from PIL import Image

    media.write_image_folder(tmp_path / "f", [f"img_{k}" for k in range(5)])
    Image.new("RGB", (30, 20)).save(tmp_path / "f" / "img_3.png")
    with pytest.raises(MixedFrameSizeError) as e:
        open_reader(tmp_path / "f")
    assert "img_3.png" in str(e.value) and e.value.path.endswith("img_3.png")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(EmptySourceError):
        open_reader(tmp_path / "empty")


def test_missing_source_and_unknown_kind(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_reader(tmp_path / "nope.mp4")
    with pytest.raises(UnsupportedSourceError):
        open_reader({"not": "a video"})


def test_16bit_tiff_is_windowed_not_saturated(tmp_path):
    import tifffile
    from PIL import Image

    stack = media.uint16_stack(6)
    p = tmp_path / "cells.tif"
    tifffile.imwrite(p, stack)
    # the failure users hit: PIL's 8-bit conversion saturates nearly every pixel
    naive = np.asarray(Image.fromarray(stack[0]).convert("RGB"))
    assert (naive == 255).mean() > 0.9
    with open_video(p, workdir=tmp_path / "w") as fs:
        frame = fs.read(0)
        assert frame.dtype == np.uint8 and frame.shape == (64, 80, 3)
        assert (frame == 255).mean() < 0.02
        assert frame.std() > 20  # contrast is kept
        lo, hi = fs.mapping.windows[0]
        assert np.percentile(stack, 0.5) - 50 <= lo < hi <= np.percentile(stack, 99.5) + 50
        np.testing.assert_array_equal(fs.read_raw(3)[..., 0], stack[3])  # originals stay available


def test_float_stack_with_nan_and_constant_frame(tmp_path):
    stack = media.uint16_stack(4).astype(np.float32)
    stack[1, :5, :5] = np.nan
    stack[2] = 7.0  # a constant frame
    with open_video(stack, workdir=tmp_path / "w") as fs:
        assert fs.info.dtype == "float32"
        f1, f2 = fs.read(1), fs.read(2)
        assert (f1[:5, :5] == 0).all()
        assert np.isfinite(fs.mapping.windows[0]).all()
        assert f2.min() == f2.max()


def test_hyperstack_needs_z_and_channels(tmp_path):
    import tifffile

    data = np.zeros((3, 4, 5, 32, 40), np.uint16)  # T Z C Y X
    p = tmp_path / "hyper.tif"
    tifffile.imwrite(p, data, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(AmbiguousAxesError, match="z="):
        open_reader(p)
    with pytest.raises(AmbiguousAxesError, match="channels="):
        open_reader(p, z=1)
    with pytest.raises(InvalidOptionError):
        open_reader(p, z=9, channels=[0])
    with open_reader(p, z=1, channels=[4, 0]) as r:
        assert r.info.channels == 2 and r.info.n_frames == 3


def test_z_stack_without_time_axis_asks(tmp_path):
    import tifffile

    p = tmp_path / "zstack.tif"
    tifffile.imwrite(p, np.zeros((6, 16, 16), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(AmbiguousAxesError, match="time_axis"):
        open_reader(p)
    with open_reader(p, time_axis="Z") as r:
        assert r.info.n_frames == 6


def test_frame_index_out_of_range(videos):
    with open_reader(videos["cfr"]) as r:
        for bad in (-1, 48, 10**6):
            with pytest.raises(FrameIndexError):
                r.read_raw(bad)


def test_real_rotated_iphone_clip_is_portrait():
    from tests.conftest import shared

    with open_reader(shared("video/iphone4s_rotated_mov/iphone_rotated.mov")) as r:
        assert (r.info.width, r.info.height, r.info.rotation) == (320, 568, 90)
        assert r.info.n_frames == 66
