"""One conformance suite, run against every reader on generated and real sources.

Each case gives a source, reader options, the expected frame count / size /
dtype, and an independent reference decode (OpenCV, PIL, tifffile or the
burned-in frame index), so a reader is never checked against itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from samtrack.io.registry import open_reader
from tests import media
from tests.conftest import shared


@dataclass
class Case:
    id: str
    make: Callable[[Path, dict], tuple]  # -> (source, options, n_frames, (h, w, c), dtype, reference(i) | None, tol)
    reader: str | None = None


def _video(key, reader=None, tol=0):
    def make(tmp, videos):
        p = videos[key]
        import av

        with av.open(str(p)) as c:
            n = sum(1 for _ in c.decode(video=0))
        return p, {}, n, None, "uint8", None, tol
    return Case(f"{key}-{reader or 'auto'}", make, reader)


def _ocv_reference(path: Path):
    """Frames decoded by OpenCV (its own FFmpeg build and colour conversion)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f[..., ::-1])
    cap.release()
    return frames


def _real_video(rel, tol):
    def make(tmp, videos):
        p = shared(rel)
        ref = _ocv_reference(p)
        return p, {}, len(ref), ref[0].shape, "uint8", (lambda i: ref[i]), tol
    return Case(f"real-{Path(rel).name}", make)


def _images(tmp, videos):
    names = ["b_frame10", "a_frame2", "frame1", "c_frame100", "frame03"]
    frames = media.write_image_folder(tmp / "imgs", names)
    order = sorted(range(len(names)), key=lambda k: _natural_key(names[k]))
    ref = [frames[k] for k in order]
    return tmp / "imgs", {}, len(ref), ref[0].shape, "uint8", (lambda i: ref[i]), 0


def _natural_key(s):
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _tiff(axes):
    def make(tmp, videos):
        import tifffile

        stack = media.uint16_stack(5)
        if axes == "TYX":
            data, opts, ref = stack, {}, lambda i: stack[i][..., None]
        elif axes == "TCYX":
            data = np.stack([stack, stack[:, ::-1]], axis=1)
            opts, ref = {}, lambda i: np.moveaxis(data[i], 0, -1)
        elif axes == "TZCYX":
            data = np.stack([np.stack([stack, stack // 2], 1)] * 3, axis=1)  # T, Z, C, Y, X
            opts, ref = {"z": 1}, lambda i: np.moveaxis(data[i, 1], 0, -1)
        else:  # TYXS: 8-bit RGB
            data = np.stack([media.frame_pattern(i, 40, 56) for i in range(5)])
            opts, ref = {}, lambda i: data[i]
        p = tmp / f"stack_{axes}.tif"
        kw = {"imagej": True, "metadata": {"axes": axes}} if axes in ("TCYX", "TZCYX") else {"photometric": "rgb" if axes == "TYXS" else "minisblack"}
        tifffile.imwrite(p, data, bigtiff=(axes == "TYX"), **kw)
        r0 = ref(0)
        return p, opts, 5, r0.shape, str(data.dtype), ref, 0
    return Case(f"tiff-{axes}", make)


def _numpy(tmp, videos):
    arr = media.uint16_stack(4)
    return arr, {}, 4, (64, 80, 1), "uint16", (lambda i: arr[i][..., None]), 0


def _zarr(ome):
    def make(tmp, videos):
        import zarr

        arr = media.uint16_stack(4)
        if ome:
            g = zarr.open_group(tmp / "img.ome.zarr", mode="w", zarr_format=2)
            g.create_array("0", data=arr[:, None, None], chunks=(1, 1, 1, 64, 80))  # t c z y x
            g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "tczyx"], "datasets": [{"path": "0"}]}]
            src = tmp / "img.ome.zarr"
        else:
            src = tmp / "plain.zarr"
            zarr.create_array(src, data=arr, chunks=(1, 64, 80))
        return src, {}, 4, (64, 80, 1), "uint16", (lambda i: arr[i][..., None]), 0
    return Case("ome-zarr" if ome else "zarr", make)


def _real_tiff(tmp, videos):
    import tifffile

    p = shared("microscopy/laptrack_timelapse_uint16_with_labels/example_images.tif")
    ref = tifffile.imread(p)
    return p, {}, ref.shape[0], ref.shape[1:] + (1,), str(ref.dtype), (lambda i: ref[i][..., None]), 0


def _real_hyperstack(tmp, videos):
    import tifffile

    p = shared("microscopy/imagej_mitosis_hyperstack_TZCYX_uint16/mitosis.tif")
    ref = tifffile.imread(p)  # T Z C Y X
    return p, {"z": 2, "channels": [1, 0]}, ref.shape[0], ref.shape[3:] + (2,), str(ref.dtype), (lambda i: np.moveaxis(ref[i, 2][[1, 0]], 0, -1)), 0


def _real_ctc_folder(tmp, videos):
    import tifffile

    d = shared("microscopy/ctc_Fluo-N2DH-GOWT1_01_t000-t024/01")
    files = sorted(d.glob("t*.tif"))
    first = tifffile.imread(files[0])
    return d, {}, len(files), first.shape + (1,), str(first.dtype), (lambda i: tifffile.imread(files[i])[..., None]), 0


def _real_jpeg_folder(tmp, videos):
    from PIL import Image

    d = shared("vos/xmem2_pumavos_chair/JPEGImages")
    files = sorted(d.glob("*.jpg"))
    ref = lambda i: np.asarray(Image.open(files[i]).convert("RGB"))
    return d, {}, len(files), ref(0).shape, "uint8", ref, 2  # libjpeg versions may differ by a level


CASES = [
    _video("cfr"), _video("mkv"), _video("webm"), _video("avi"), _video("vfr"), _video("rot90"),
    _video("odd"), _video("10bit"), _video("long_gop"), _video("cfr", reader="decord"),
    Case("images-natural-sort", _images), _tiff("TYX"), _tiff("TCYX"), _tiff("TZCYX"), _tiff("TYXS"),
    Case("numpy", _numpy), _zarr(False), _zarr(True),
    _real_video("video/sam2_bedroom/bedroom.mp4", 3), _real_video("video/imageio_cockatoo_yuv444/cockatoo.mp4", 3),
    _real_video("video/imageio_realshort_3gp_brand/realshort.mp4", 3), _real_video("video/dandi_stub_mjpeg_avi/stub_mjpeg.avi", 3),
    _real_video("video/iphone4s_rotated_mov/iphone_rotated.mov", 3), _real_video("video/torchcodec_h264_10bit/h264_10bits.mp4", 3),
    _real_video("vos/xmem2_pumavos_chair/chair.mp4", 3), _real_video("surgical/endovis17_robotic_clip_1080p/short_source.mp4", 3),
    Case("real-tiff-uint16", _real_tiff), Case("real-hyperstack-TZCYX", _real_hyperstack),
    Case("real-ctc-folder", _real_ctc_folder), Case("real-jpeg-folder", _real_jpeg_folder),
]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request, tmp_path, videos):
    c: Case = request.param
    if c.reader == "decord":
        pytest.importorskip("decord", reason="decord is optional")
    source, opts, n, shape, dtype, ref, tol = c.make(tmp_path, videos)
    reader = open_reader(source, reader=c.reader, **opts)
    yield reader, source, n, shape, dtype, ref, tol
    reader.close()


def _check_frame(reader, i, ref, tol, burned):
    got = reader.read_raw(i)
    if ref is not None:
        want = ref(i)
        assert got.shape == want.shape, f"frame {i}"
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        assert diff.mean() <= tol, f"frame {i}: mean abs diff {diff.mean():.2f} > {tol}"
    if burned:
        assert media.read_index(got) == i % (1 << min(media.BITS, got.shape[1] // media.BLOCK))
    return got


def test_count_shape_dtype(case):
    reader, source, n, shape, dtype, ref, tol = case
    info = reader.info
    assert info.n_frames == n == len(reader)
    assert info.dtype == dtype
    frame = reader.read_raw(0)
    assert frame.dtype == np.dtype(dtype)
    assert frame.shape == (info.height, info.width, info.channels)
    if shape is not None:
        assert frame.shape == tuple(shape)


def test_sequential_matches_reference(case):
    reader, source, n, shape, dtype, ref, tol = case
    burned = isinstance(source, Path) and source.parent.name.startswith("videos")
    frames = list(reader.iter_raw())
    assert len(frames) == n
    for i, got in enumerate(frames):
        if ref is not None:
            want = ref(i)
            assert np.abs(got.astype(np.int32) - want.astype(np.int32)).mean() <= tol, f"frame {i}"
        if burned:
            assert media.read_index(got) == i


def test_random_access_any_order(case):
    reader, source, n, shape, dtype, ref, tol = case
    burned = isinstance(source, Path) and source.parent.name.startswith("videos")
    seq = list(reader.iter_raw()) if ref is None else None
    order = np.random.default_rng(7).permutation(n).tolist()[:24]  # long GOPs make each seek O(GOP)
    order = order + [n - 1, 0, n - 1, n // 2, n // 2 + 1, n // 2]  # backwards jumps and re-reads
    for i in order:
        got = _check_frame(reader, i, ref, tol, burned)
        if seq is not None:
            np.testing.assert_array_equal(got, seq[i], err_msg=f"random read of frame {i} differs from sequential")


def test_reopen_is_independent(case):
    reader, *_ = case
    other = reader.reopen()
    try:
        assert other.info == reader.info
        last = reader.info.n_frames - 1
        np.testing.assert_array_equal(other.read_raw(last), reader.read_raw(last))
    finally:
        other.close()


def test_info_timestamps_and_names_contract(case):
    """Every reader: at most 3 channels (alpha never reaches the model), a JSON-ready info,
    timestamps None or (n,) float64 increasing from 0, frame names None or one per frame."""
    import json

    reader, source, n, shape, dtype, ref, tol = case
    info = reader.info
    assert 1 <= info.channels <= 3
    d = json.loads(json.dumps(info.to_dict()))
    assert d["n_frames"] == n and isinstance(d["streams"], list) and isinstance(d["notes"], list)
    ts = reader.timestamps()
    if ts is not None:
        assert ts.dtype == np.float64 and ts.shape == (n,)
        assert abs(ts[0]) < 1e-9 and (np.diff(ts) > 0).all()
    names = reader.frame_names()
    assert names is None or (len(names) == n and len(set(names)) == n)
    if info.reader == "pyav":
        assert ts is not None and len(info.streams) >= 1
