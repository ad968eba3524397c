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


def random_checkpoint(out: Path, image_size: int, model: str = "sam2.1_hiera_tiny") -> Path:
    """A random-init SAM2/SAM2.1 ``model`` at ``image_size``, saved in the official layout."""
    from tests import model_utils

    out.mkdir(parents=True, exist_ok=True)
    name = "tiny" if model == "sam2.1_hiera_tiny" else model  # the tiny one keeps its earlier file name
    ck = out / f"random_sam2.1_{name}_{image_size}.pt"
    if not ck.exists():
        model_utils.make_checkpoint(ck, model=model, image_size=image_size)
    return ck


def random_sam3_checkpoint(out: Path, image_size: int, width: str = "tiny") -> Path:
    """A random-init SAM3 of a width preset, saved in the official layout (tests/sam3_models.py)."""
    from tests import sam3_models

    out.mkdir(parents=True, exist_ok=True)
    ck = out / f"random_sam3_{width}_{image_size}.pt"
    if not ck.exists():
        if width != "tiny":
            raise SystemExit("a random full-width SAM3 checkpoint is 3.4 GB: pass --checkpoint sam3.pt instead")
        sam3_models.make_checkpoint(ck, image_size=image_size)
    return ck


def assets(out: Path, n_frames: int, image_size: int, w: int = 160, h: int = 120):
    from tests import media

    ck = random_checkpoint(out, image_size)
    vid = out / f"bench_{n_frames}_{w}x{h}.mp4"
    if not vid.exists():
        media.write_video(vid, n_frames, w=w, h=h, gop=30)
    return ck, vid


def jpeg_folder(out: Path, n_frames: int, w: int = 1280, h: int = 720) -> Path:
    """A folder of n_frames JPEGs (a disc moving over a noisy background), as the upstream GPU bench makes."""
    import cv2
    import numpy as np

    d = out / f"jpeg_{n_frames}_{w}x{h}"
    if d.is_dir() and len(list(d.glob("*.jpg"))) == n_frames:
        return d
    d.mkdir(parents=True, exist_ok=True)
    bg = (np.random.default_rng(0).random((h, w, 3)) * 60).astype(np.uint8)
    for i in range(n_frames):
        img = bg.copy()
        cv2.circle(img, (w // 6 + (3 * i) % max(1, w - w // 3), h // 2), max(4, h // 9), (230, 200, 40), -1)
        cv2.imwrite(str(d / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return d
