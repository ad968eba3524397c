"""`samtrack info` / `samtrack cache` on every real file, and readable errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import media
from tests.conftest import SHARED, NO_SHARED

SOURCES = [
    "video/sam2_bedroom/bedroom.mp4", "video/imageio_cockatoo_yuv444/cockatoo.mp4",
    "video/imageio_realshort_3gp_brand/realshort.mp4", "video/dandi_stub_mjpeg_avi/stub_mjpeg.avi",
    "video/iphone4s_rotated_mov/iphone_rotated.mov", "video/torchcodec_h264_10bit/h264_10bits.mp4",
    "vos/xmem2_pumavos_chair/chair.mp4", "vos/xmem2_pumavos_chair/JPEGImages",
    "surgical/endovis17_robotic_clip_1080p/short_source.mp4",
    "microscopy/laptrack_timelapse_uint16_with_labels/example_images.tif",
    "microscopy/laptrack_timelapse_uint16_with_labels/example_label.tif",
    "microscopy/ctc_Fluo-N2DH-GOWT1_01_t000-t024/01", "microscopy/ctc_Fluo-C2DL-MSC_01_t000-t013/01",
    "microscopy/imagej_mitosis_hyperstack_TZCYX_uint16/mitosis.tif",
]
EXTRA = {"microscopy/imagej_mitosis_hyperstack_TZCYX_uint16/mitosis.tif": ["--z", "2"]}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "samtrack.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_every_real_source_is_listed():
    if not SHARED.exists():
        pytest.skip(NO_SHARED)
    data_files = {p.relative_to(SHARED).as_posix() for p in SHARED.rglob("*")
                  if p.is_file() and p.suffix.lower() in (".mp4", ".mov", ".avi", ".tif", ".tiff")}
    covered = {f for f in data_files if any(f == s or f.startswith(s + "/") for s in SOURCES)}
    # single images of CTC ground truth and surgical stills are frames of folders, not videos
    leftover = {f for f in data_files - covered if "_GT/" not in f and "/incorrect/" not in f}
    assert leftover == set(), f"add these to SOURCES: {sorted(leftover)}"


@pytest.mark.parametrize("rel", SOURCES)
def test_info_and_cache_on_real_data(rel, tmp_path):
    src = SHARED / rel
    if not src.exists():
        pytest.skip(NO_SHARED)
    extra = EXTRA.get(rel, [])
    r = run("info", src, "--json", *extra)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) >= {"n_frames", "height", "width", "fps", "dtype", "channels", "rotation", "reader"}
    assert d["n_frames"] > 0 and d["height"] > 0
    r = run("cache", src, "--workdir", tmp_path, *extra)
    assert r.returncode == 0, r.stderr
    assert "cached" in r.stderr and str(d["n_frames"]) in r.stderr


def test_hyperstack_without_z_explains(tmp_path):
    src = SHARED / "microscopy/imagej_mitosis_hyperstack_TZCYX_uint16/mitosis.tif"
    if not src.exists():
        pytest.skip(NO_SHARED)
    r = run("info", src)  # described, with the option that picks a Z plane; not refused
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, r.stderr
    text = " ".join(r.stdout.split())
    assert "TZCYX" in text and "Z=5" in text and "C=2" in text and "--z 0..4" in text, text
    r = run("info", src, "--z", "2")
    assert r.returncode == 0 and "n_frames: 3" in " ".join(r.stdout.split()), r.stdout


def test_truncated_and_fake_files_fail_readably(tmp_path):
    good = media.write_video(tmp_path / "g.mp4", 30)
    cut = media.truncate(good, tmp_path / "cut.mp4", 0.4)
    fake = tmp_path / "fake.mp4"
    fake.write_text("hello, I am text\n")
    for p in (cut, fake):
        for cmd in ("info", "cache"):
            r = run(cmd, p, *(["--workdir", tmp_path / "w"] if cmd == "cache" else []))
            assert r.returncode == 2, (cmd, p, r.stderr)
            assert "Traceback" not in r.stderr
            assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) <= 3


def test_truncated_faststart_info_reports_usable_frames(tmp_path):
    good = media.write_video(tmp_path / "g.mp4", 60, faststart=True)
    cut = media.truncate(good, tmp_path / "cut.mp4", 0.5)
    r = run("info", cut, "--json")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert 0 < d["n_frames"] < 60 and "truncated" in " ".join(d["notes"])


def test_models_json_lists_every_model_and_where_it_looks(tmp_path, monkeypatch):
    import os

    env = dict(os.environ, SAMTRACK_CHECKPOINTS=str(tmp_path))
    (tmp_path / "sam2.1_hiera_small.pt").write_bytes(b"x")
    r = subprocess.run([sys.executable, "-m", "samtrack.cli", "models", "--json"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert len(rows) == 9 and rows["sam2.1_hiera_small"]["present"] and not rows["sam2.1_hiera_tiny"]["present"]
    assert rows["sam2.1_hiera_small"]["path"] == str(tmp_path / "sam2.1_hiera_small.pt")
    assert rows["sam2.1_hiera_large"]["url"].endswith("sam2.1_hiera_large.pt")
    assert rows["sam3"]["gated"] and rows["sam3"]["family"] == "sam3" and not rows["sam3"]["present"]
