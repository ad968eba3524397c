"""Where a samtrack propagation spends its time: cProfile of the tracking loop.

Prints tracking FPS, then the functions with the most own time and the most
cumulative time. --prebuild decodes the whole video into the frame cache first,
so the loop runs without the background decoder (isolates its cost).
GPU example: --device cuda --image-size 1024 --frames 300 --size 1280x720 --source jpeg
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from _common import assets, jpeg_folder, random_checkpoint


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--objects", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--source", choices=("mp4", "jpeg"), default="mp4")
    ap.add_argument("--prebuild", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    import torch

    import samtrack.session as ss

    w, h = map(int, a.size.split("x"))
    ck = random_checkpoint(Path(a.out), a.image_size)
    vid = jpeg_folder(Path(a.out), a.frames, w, h) if a.source == "jpeg" else assets(Path(a.out), a.frames, a.image_size, w, h)[1]
    backend = ss.load_model(checkpoint=ck, image_size=a.image_size, device=a.device)
    workdir = tempfile.mkdtemp(prefix="samtrack-prof-")
    s = ss.open_session(vid, backend=backend, workdir=workdir)
    if a.prebuild:
        t = time.perf_counter()
        s.frames.build()
        print(f"cache build: {time.perf_counter() - t:.1f} s")
    for k in range(a.objects):
        s.add_points(0, k + 1, [[w * (0.2 + 0.15 * k), h / 2]], [1])
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    warm = s.propagate("forward", stop=min(8, a.frames))
    for _ in warm:
        pass
    sync()
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    n = sum(1 for _ in s.propagate("forward"))
    sync()
    prof.disable()
    dt = time.perf_counter() - t
    print(f"{n} frames in {dt:.2f} s: {n / dt:.1f} FPS ({a.objects} object(s), {a.image_size} px, {a.device}, "
          f"prebuild={a.prebuild})")
    for key, restrict in (("tottime", ()), ("cumulative", ("samtrack|zarr|asyncio",))):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(*restrict, a.top)
        print(f"-- by {key} --")
        print("\n".join(line[:170] for line in buf.getvalue().splitlines()[6:] if line.strip()))
    s.close()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
