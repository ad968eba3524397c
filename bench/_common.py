"""Shared helpers of the tracking benchmarks (a random-init checkpoint, a generated video, RSS)."""
from __future__ import annotations

import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def assets(out: Path, n_frames: int, image_size: int, w: int = 160, h: int = 120):
    from tests import media, model_utils

    out.mkdir(parents=True, exist_ok=True)
    ck = out / f"random_sam2.1_tiny_{image_size}.pt"
    if not ck.exists():
        model_utils.make_checkpoint(ck, image_size=image_size)
    vid = out / f"bench_{n_frames}_{w}x{h}.mp4"
    if not vid.exists():
        media.write_video(vid, n_frames, w=w, h=h, gop=30)
    return ck, vid
