"""How far samtrack's model-ready frames are from upstream's own loaders (report, no target).

Upstream ``load_video_frames`` reads a JPEG folder with PIL (resize, bicubic)
or an mp4 with decord (decoder-side scaling). samtrack decodes once, caches
the original pixels and resizes them on the host on the uint8 grid (torch's
antialiased bicubic uint8 kernel, which follows Pillow's arithmetic), for every
device. Differences are in 0..255 pixel levels.
Usage: python bench/resize_vs_upstream.py [--image-size 1024]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import ROOT

SHARED = ROOT.parent / "shared" / "data"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def levels(x: torch.Tensor) -> torch.Tensor:
    return (x * STD + MEAN) * 255.0


def report(name, ours, theirs):
    d = (levels(ours) - levels(theirs)).abs()
    print(f"{name:<44} mean {d.mean():6.2f}  p99 {torch.quantile(d.flatten()[::97], 0.99):6.1f}  max {d.max():6.1f} levels")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=10)
    a = ap.parse_args()
    from sam2.utils.misc import load_video_frames

    import samtrack

    S, n = a.image_size, a.frames
    jpg_dir = SHARED / "vos/xmem2_pumavos_chair/JPEGImages"
    mp4 = SHARED / "vos/xmem2_pumavos_chair/chair.mp4"
    if not jpg_dir.exists():
        raise SystemExit(f"needs {SHARED}")
    with tempfile.TemporaryDirectory() as tmp:
        # upstream wants integer-named JPEGs: copy the first frames under such names
        src = sorted(jpg_dir.glob("*.jpg"))[:n]
        d = Path(tmp) / "jpg"
        d.mkdir()
        for i, p in enumerate(src):
            (d / f"{i}.jpg").write_bytes(p.read_bytes())
        up_jpg, _, _ = load_video_frames(str(d), S, offload_video_to_cpu=True)
        with samtrack.open_video(d, workdir=Path(tmp) / "w1") as fs:
            ours = torch.stack([fs.model_input(i, S) for i in range(n)])
        report(f"JPEG folder ({len(src)} frames) vs PIL resize", ours, up_jpg[:n])
        up_mp4, _, _ = load_video_frames(str(mp4), S, offload_video_to_cpu=True)
        with samtrack.open_video(mp4, workdir=Path(tmp) / "w2") as fs:
            ours = torch.stack([fs.model_input(i, S) for i in range(n)])
        report("mp4 vs decord decoder-side scaling", ours, up_mp4[:n].float())
    print(f"image size {S}; chair sequence (720x480) from shared/data/vos")


if __name__ == "__main__":
    main()
