from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests import media

SHARED = Path(os.environ.get("SAMTRACK_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
NO_SHARED = f"real sample data not found at {SHARED} (set SAMTRACK_SHARED_DATA); CI has it"


def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(NO_SHARED)
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SAMTRACK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Generated videos used across the io tests (made once per session)."""
    d = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(1)
    vfr_pts = np.cumsum(rng.choice([20, 33, 40, 90], size=40)).tolist()
    return {
        "cfr": media.write_video(d / "cfr.mp4", 48, faststart=True),
        "mkv": media.write_video(d / "cfr.mkv", 30, codec="libx264"),
        "webm": media.write_video(d / "clip.webm", 20, codec="libvpx-vp9", pix_fmt="yuv420p"),
        "avi": media.write_video(d / "clip.avi", 20, codec="mjpeg", pix_fmt="yuvj420p"),
        "vfr": media.write_video(d / "vfr.mp4", 40, pts_ms=[0] + vfr_pts[:-1]),
        "rot90": media.write_video(d / "rot90.mp4", 20, w=64, h=96, rotation_cw=90),
        "odd": media.write_video(d / "odd.mp4", 20, w=101, h=75, pix_fmt="yuv444p"),
        "10bit": media.write_video(d / "10bit.mp4", 20, pix_fmt="yuv420p10le"),
        "long_gop": media.write_video(d / "long_gop.mp4", 120, gop=60, faststart=True),
        "moov_end": media.write_video(d / "moov_end.mp4", 60, faststart=False),
        "faststart": media.write_video(d / "faststart.mp4", 60, faststart=True),
    }


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu / weights / network are skipped unless their resource exists."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on a GPU machine)"))
        if "weights" in item.keywords and not os.environ.get("SAMTRACK_CHECKPOINTS"):
            item.add_marker(pytest.mark.skip(reason="needs real checkpoints in $SAMTRACK_CHECKPOINTS"))
        if "network" in item.keywords and not os.environ.get("SAMTRACK_NETWORK_TESTS"):
            item.add_marker(pytest.mark.skip(reason="needs the internet (set SAMTRACK_NETWORK_TESTS=1)"))
