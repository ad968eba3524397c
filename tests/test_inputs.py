"""Inputs reach the model as users see them: EXIF orientation, every channel layout,
describing what cannot be opened yet, several video streams, notes, timestamps.

References are independent of samtrack: Pillow's ``ImageOps.exif_transpose`` and
``convert("RGB")`` (what upstream SAM 2 does), PyAV's ``frame.time``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from samtrack.errors import AmbiguousAxesError, InvalidOptionError, MixedFrameSizeError
from samtrack.io import describe_source, open_video
from samtrack.io.readers.image_folder import read_image, read_label_image
from samtrack.io.registry import open_reader
from tests import media
from tests.conftest import shared

ROTATION = {1: 0, 2: 0, 3: 180, 4: 0, 5: 270, 6: 90, 7: 90, 8: 270}


def _upright_rgb(path):
    """What every viewer shows, as upstream converts it: exif_transpose + convert('RGB')."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


# -- 1. EXIF orientation --------------------------------------------------------------
@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_frames_are_upright(tmp_path, orientation, ext):
    from PIL import Image

    d = tmp_path / "phone"
    d.mkdir()
    for k in range(2):  # stored 64 wide x 40 high
        media.save_with_orientation(Image.fromarray(media.frame_pattern(k, 40, 64)), d / f"IMG_{k}{ext}", orientation)
    with open_reader(d) as r:
        want0 = _upright_rgb(d / f"IMG_0{ext}")
        assert (r.info.height, r.info.width) == want0.shape[:2]
        assert r.info.rotation == ROTATION[orientation]
        for k in range(2):
            np.testing.assert_array_equal(r.read_raw(k), _upright_rgb(d / f"IMG_{k}{ext}"))
        mirrored = orientation in (2, 4, 5, 7)
        assert any("mirrored" in n for n in r.info.notes) == mirrored
        assert any("EXIF" in n for n in r.info.notes) == (orientation != 1)


def test_exif_rotated_folder_is_upright_through_the_frame_store(tmp_path):
    from PIL import Image

    d = tmp_path / "phone"
    d.mkdir()
    stored = np.full((40, 64, 3), 60, np.uint8)
    stored[:8] = 255  # stored top band: shown on the right once turned 90 degrees clockwise
    for k in range(3):
        media.save_with_orientation(Image.fromarray(stored), d / f"IMG_{k:04d}.jpg", 6, quality=95)
    with open_video(d, workdir=tmp_path / "w") as fs:
        assert (fs.info.width, fs.info.height, fs.info.rotation) == (40, 64, 90)
        frame = fs.read(0)
        assert frame.shape == (64, 40, 3)
        assert frame[:, -6:].mean() > 200 and frame[:, :6].mean() < 100


def test_size_scan_compares_displayed_sizes_without_decoding(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    d = tmp_path / "mixed_turns"
    d.mkdir()
    upright = media.frame_pattern(0, 64, 40)  # 40 wide x 64 high as displayed
    Image.fromarray(upright).save(d / "a.jpg", quality=95)
    media.save_with_orientation(Image.fromarray(np.rot90(upright, 1).copy()), d / "b.jpg", 6, quality=95)
    media.save_with_orientation(Image.fromarray(np.rot90(upright, 1).copy()), d / "c.png", 6)

    def no_decoding(self):
        raise AssertionError("opening a folder decoded pixels")

    with monkeypatch.context() as m:
        m.setattr(ImageFile.ImageFile, "load", no_decoding)
        r = open_reader(d)  # headers only, EXIF included
    with r:
        assert (r.info.width, r.info.height) == (40, 64)
        for i in range(3):
            assert r.read_raw(i).shape == (64, 40, 3)
    Image.fromarray(np.rot90(upright, 1).copy()).save(d / "d.png")  # really landscape: wrong size
    with pytest.raises(MixedFrameSizeError, match="d.png"):
        open_reader(d)


def test_read_image_stays_raw_unless_upright_is_asked(tmp_path):
    from PIL import Image

    stored = media.frame_pattern(3, 40, 64)
    p = media.save_with_orientation(Image.fromarray(stored), tmp_path / "m.png", 6)
    np.testing.assert_array_equal(read_image(p), stored)
    np.testing.assert_array_equal(read_image(p, upright=True), np.rot90(stored, -1))


def test_read_label_image_returns_label_values(tmp_path):
    import tifffile
    from PIL import Image

    labels = np.zeros((40, 64), np.uint8)
    labels[5:15, 10:30] = 3
    labels[20:35, 40:60] = 7
    pal = Image.fromarray(labels, "P")
    pal.putpalette([0, 0, 0] + [255, 0, 0] * 2 + [0, 255, 0] + [10, 20, 30] * 3 + [0, 0, 255] + [0] * (3 * 248))
    pal.save(tmp_path / "pal.png")
    got = read_label_image(tmp_path / "pal.png")
    assert got.shape == (40, 64) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, labels)  # indices, not colours
    media.save_with_orientation(pal, tmp_path / "pal6.png", 6)
    np.testing.assert_array_equal(read_label_image(tmp_path / "pal6.png"), np.rot90(labels, -1))

    big = labels.astype(np.uint16) * 1000
    Image.fromarray(big).save(tmp_path / "l16.png")
    got = read_label_image(tmp_path / "l16.png")
    assert got.dtype == np.uint16 and got.shape == (40, 64)
    np.testing.assert_array_equal(got, big)
    tifffile.imwrite(tmp_path / "lab.tif", big)
    np.testing.assert_array_equal(read_label_image(tmp_path / "lab.tif"), big)
    Image.fromarray(labels, "L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "gray.png"), labels)
    rgba = np.zeros((40, 64, 4), np.uint8)
    rgba[..., 0] = labels * 30
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = read_label_image(tmp_path / "rgba.png")
    assert got.shape == (40, 64, 3)
    np.testing.assert_array_equal(got[..., 0], labels * 30)


# -- 2. channel layouts ---------------------------------------------------------------
_EXT = {"CMYK": ".jpg", "1": ".png"}


def _mode_folder(d, modes):
    """One image per mode; "tif:MODE" writes a TIFF (palette, RGBA with ExtraSamples, 16-bit)."""
    d.mkdir()
    paths = []
    for k, mode in enumerate(modes):
        ext = ".tif" if mode.startswith("tif:") else _EXT.get(mode, ".png")
        p = d / f"frame_{k:03d}{ext}"
        media.pil_image(mode.removeprefix("tif:"), k).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("mode,dtype,channels", [
    ("RGB", "uint8", 3), ("RGBA", "uint8", 3), ("LA", "uint8", 1), ("L", "uint8", 1), ("P", "uint8", 3),
    ("1", "uint8", 1), ("CMYK", "uint8", 3), ("I;16", "uint16", 1)])
def test_every_layout_reaches_the_display_as_rgb(tmp_path, mode, dtype, channels):
    paths = _mode_folder(tmp_path / mode.replace(";", ""), [mode] * 3)
    with open_video(paths[0].parent, workdir=tmp_path / "w") as fs:
        assert (fs.info.dtype, fs.info.channels) == (dtype, channels)
        for i, p in enumerate(paths):
            frame = fs.read(i)
            assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
            if dtype == "uint8":  # as upstream: convert("RGB")
                np.testing.assert_array_equal(frame, _upright_rgb(p))
            else:  # 16-bit is windowed, not saturated, and the originals stay
                from PIL import Image

                np.testing.assert_array_equal(fs.read_raw(i)[..., 0], np.asarray(Image.open(p)))
                assert (frame == 255).mean() < 0.05 and frame.std() > 20
        if mode in ("RGBA", "LA"):
            assert any("alpha" in n for n in fs.info.notes)
        t = fs.model_input(0, 32)
        assert tuple(t.shape) == (3, 32, 32)


def test_folder_mixing_layouts_is_rgb_everywhere(tmp_path):
    from PIL import Image

    modes = ["RGB", "RGBA", "L", "P", "I;16", "1", "LA", "CMYK", "tif:P", "tif:RGBA", "tif:I;16"]
    paths = _mode_folder(tmp_path / "mixed", modes)
    with open_reader(tmp_path / "mixed") as r:
        assert (r.info.dtype, r.info.channels) == ("uint8", 3)
        assert any("differ in layout" in n and "8-bit RGB" in n for n in r.info.notes)
        for i, (p, mode) in enumerate(zip(paths, modes)):
            got = r.read_raw(i)
            assert got.shape == (48, 64, 3) and got.dtype == np.uint8
            if mode.endswith("I;16"):  # the documented rule: linear, v * 255 / 65535
                v = np.asarray(Image.open(p)).astype(np.float64)
                want = np.round(v * 255 / 65535).astype(np.uint8)
                np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=2))
            else:
                np.testing.assert_array_equal(got, _upright_rgb(p))


def test_rgba_tiff_stack_is_read_as_rgb(tmp_path):
    import tifffile

    rgba = np.stack([np.dstack([media.frame_pattern(i, 40, 56), np.full((40, 56), 200, np.uint8)]) for i in range(4)])
    p = tmp_path / "rgba.tif"
    tifffile.imwrite(p, rgba, photometric="rgb", extrasamples=["unassalpha"])
    with open_reader(p) as r:
        assert r.info.channels == 3
        np.testing.assert_array_equal(r.read_raw(2), rgba[2, ..., :3])
        assert any("alpha" in n for n in r.info.notes)


def test_rgba_arrays_are_read_as_rgb_or_ask(tmp_path):
    import zarr

    rgba = np.stack([np.dstack([media.frame_pattern(i, 40, 56), np.full((40, 56), 255, np.uint8)]) for i in range(4)])
    with open_reader(rgba) as r:
        assert r.info.channels == 3 and any("alpha" in n for n in r.info.notes)
        np.testing.assert_array_equal(r.read_raw(1), rgba[1, ..., :3])
    zarr.create_array(tmp_path / "rgba.zarr", data=rgba, chunks=(1, 40, 56, 4))
    with open_reader(tmp_path / "rgba.zarr") as r:
        assert r.info.channels == 3
    four = rgba.astype(np.uint16) * 200  # 16-bit: four fluorescence channels as likely as RGBA: ask
    with pytest.raises(AmbiguousAxesError, match=r"channels=\[0, 1, 2\]"):
        open_reader(four)
    with open_video(four, channels=[0, 1, 2], workdir=tmp_path / "w") as fs:
        assert fs.info.channels == 3 and fs.read(0).shape == (40, 56, 3)


# -- 3. describe what cannot be opened yet -----------------------------------------------
def test_describe_hyperstack_lists_the_choices(tmp_path):
    import tifffile

    p = tmp_path / "hyper.tif"
    tifffile.imwrite(p, np.zeros((3, 4, 5, 32, 40), np.uint16), imagej=True, metadata={"axes": "TZCYX"})
    d = describe_source(p)
    json.dumps(d)
    assert d["opened"] is False and d["reader"] == "tiff"
    assert d["axes"] == "TZCYX" and d["shape"] == [3, 4, 5, 32, 40]
    assert d["sizes"] == {"T": 3, "Z": 4, "C": 5, "Y": 32, "X": 40}
    assert d["dtype"] == "uint16" and (d["n_frames"], d["height"], d["width"]) == (3, 32, 40)
    by_kw = {c["keyword"]: c for c in d["choices"]}
    assert by_kw["z"] == {"option": "--z", "keyword": "z", "range": [0, 3], "why": "4 Z planes per time point"}
    assert by_kw["channels"]["option"] == "--channel" and by_kw["channels"]["range"] == [0, 4]
    d = describe_source(p, z=1, channels=[0, 2])
    assert d["opened"] is True and d["choices"] == [] and d["channels"] == 2 and d["n_frames"] == 3
    assert d["sizes"]["Z"] == 4
    json.dumps(d)


def test_describe_z_stack_without_time_and_plain_sources(tmp_path, videos):
    import tifffile

    p = tmp_path / "zstack.tif"
    tifffile.imwrite(p, np.zeros((6, 16, 16), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    d = describe_source(p)
    assert [(c["option"], c.get("values")) for c in d["choices"]] == [("--time-axis", ["Z"])]
    d = describe_source(np.zeros((3, 8, 8, 4), np.uint16))
    assert d["opened"] is False and d["choices"][0]["keyword"] == "channels" and d["source"] == "<ndarray>"
    d = describe_source(videos["cfr"])
    assert d["opened"] and d["n_frames"] == 48 and d["choices"] == [] and len(d["streams"]) == 1
    json.dumps(d)


def test_describe_real_hyperstack_folder():
    folder = shared("microscopy/imagej_mitosis_hyperstack_TZCYX_uint16")  # mitosis.tif + README.md
    with open_reader(folder, z=2) as r:  # a folder holding one TIFF is that stack
        assert (r.name, r.info.n_frames, r.info.channels) == ("tiff", 3, 2)
    d = describe_source(folder)
    assert d["opened"] is False
    assert d["sizes"]["T"] == 3 and d["sizes"]["Z"] == 5 and d["sizes"]["C"] == 2
    assert d["choices"] == [{"option": "--z", "keyword": "z", "range": [0, 4], "why": "5 Z planes per time point"}]
    json.dumps(d)


# -- 4. several video streams --------------------------------------------------------------
def test_every_video_stream_is_listed_and_selectable(tmp_path):
    p = media.write_multistream_mkv(tmp_path / "two.mkv")
    with open_reader(p) as r:
        assert [(s.index, s.container_index, s.width, s.height) for s in r.info.streams] == [(0, 1, 64, 48), (1, 2, 80, 64)]
        assert (r.info.n_frames, r.info.width) == (10, 64)
        assert media.read_index(r.read_raw(7)) == 7
        assert any("2 video streams" in n for n in r.info.notes)
        assert r.info.to_dict()["streams"][1]["codec"] == "h264"
    with open_video(p, stream=1, workdir=tmp_path / "w") as fs:  # the background builder reopens stream 1
        assert (fs.info.n_frames, fs.info.width, fs.info.height) == (12, 80, 64)
        assert [media.read_index(fs.read(i)) for i in (11, 0, 5)] == [111, 100, 105]
    for bad in (2, -1):
        with pytest.raises(InvalidOptionError, match="2 video stream") as e:
            open_reader(p, stream=bad)
        assert "80x64" in str(e.value)


def test_audio_first_iphone_clip_still_reads_its_video():
    with open_reader(shared("video/iphone4s_rotated_mov/iphone_rotated.mov")) as r:
        assert len(r.info.streams) == 1 and r.info.streams[0].container_index == 1
        assert r.info.n_frames == 66
    with pytest.raises(InvalidOptionError):
        open_reader(shared("video/iphone4s_rotated_mov/iphone_rotated.mov"), stream=1)


# -- 5. notes ---------------------------------------------------------------------------------
def test_notes_say_what_is_unusual(videos, tmp_path):
    import tifffile

    with open_reader(videos["vfr"]) as r:
        vfr = [n for n in r.info.notes if "variable frame rate" in n]
        assert vfr and "20.0" in vfr[0] and "90.0" in vfr[0]  # min / max interval in ms
    with open_reader(videos["cfr"]) as r:
        assert not any("variable" in n for n in r.info.notes)
    with open_reader(videos["10bit"]) as r:
        assert any("10-bit" in n for n in r.info.notes)
    with open_reader(shared("video/iphone4s_rotated_mov/iphone_rotated.mov")) as r:
        assert not any("variable" in n for n in r.info.notes)  # one 35 ms frame among 33.3 ms ones
    tifffile.imwrite(tmp_path / "s.tif", media.uint16_stack(3))
    with open_reader(tmp_path / "s.tif") as r:
        assert any("16-bit" in n for n in r.info.notes)
    with open_reader(media.uint16_stack(3).astype(np.float32)) as r:
        assert any("float" in n for n in r.info.notes)


# -- 6. timestamps and frame names -----------------------------------------------------------
def _decoded_times(path, stream=0):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[stream]
        start = s.start_time or 0
        return sorted(float((f.pts - start) * s.time_base) for f in c.decode(s))


@pytest.mark.parametrize("key", ["vfr", "cfr", "rot90"])
def test_video_timestamps_are_presentation_times(videos, key, tmp_path):
    with open_video(videos[key], workdir=tmp_path / "w") as fs:
        ts = fs.timestamps()
        assert ts.dtype == np.float64 and ts.shape == (len(fs),)
        np.testing.assert_array_equal(ts, _decoded_times(videos[key]))
        assert fs.frame_names() is None
    if key == "cfr":
        np.testing.assert_allclose(ts, np.arange(48) / 25, atol=1e-9)


def test_real_video_timestamps_match_frame_time():
    p = shared("video/iphone4s_rotated_mov/iphone_rotated.mov")
    with open_reader(p) as r:
        ts = r.timestamps()
        np.testing.assert_array_equal(ts, _decoded_times(p))
        assert ts[0] == 0.0 and len(ts) == 66


def test_truncated_video_timestamps_cover_usable_frames(videos, tmp_path):
    cut = media.truncate(videos["faststart"], tmp_path / "cut.mp4", 0.5)
    with open_reader(cut) as r:
        assert len(r.timestamps()) == r.info.n_frames


def test_folder_and_stack_timestamps_and_names(tmp_path):
    import tifffile

    names = ["frame10", "frame2", "frame1"]
    media.write_image_folder(tmp_path / "f", names)
    with open_video(tmp_path / "f", workdir=tmp_path / "w1") as fs:
        assert fs.timestamps() is None
        assert fs.frame_names() == ["frame1.png", "frame2.png", "frame10.png"]
    with open_video(tmp_path / "f", fps=10.0, workdir=tmp_path / "w2") as fs:
        np.testing.assert_allclose(fs.timestamps(), [0.0, 0.1, 0.2])
    tifffile.imwrite(tmp_path / "t.tif", media.uint16_stack(4), imagej=True, metadata={"axes": "TYX", "finterval": 0.5})
    with open_video(tmp_path / "t.tif", workdir=tmp_path / "w3") as fs:
        np.testing.assert_allclose(fs.timestamps(), [0.0, 0.5, 1.0, 1.5])
        assert fs.frame_names() is None
    with open_video(media.uint16_stack(3), workdir=tmp_path / "w4") as fs:
        assert fs.timestamps() is None
