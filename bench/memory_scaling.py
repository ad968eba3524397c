"""Host memory after 200 and after 2,000 tracked frames (CPU test model).

samtrack keeps only what attention reads in RAM (bounded host tier) and pages
the rest to disk, so RSS should not grow with the number of tracked frames.
Prints both figures and their difference (target: under 100 MB). With
``--upstream`` the same is measured for SAM2VideoPredictor in a subprocess.
Usage: python bench/memory_scaling.py [--frames 2000] [--image-size 128]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import assets, peak_rss_mib, rss_mib


def run_samtrack(ck, vid, image_size, marks):
    import samtrack
    from samtrack.session import SessionConfig

    work = Path(tempfile.mkdtemp(prefix="samtrack-bench-"))
    out = {}
    try:
        s = samtrack.open_session(vid, checkpoint=ck, image_size=image_size, device="cpu", workdir=work,
                                  config=SessionConfig(host_budget_bytes=64 * 2**20))
        s.add_points(0, 1, [[40, 60]], [1])
        t0 = time.perf_counter()
        for r in s.propagate("forward"):
            n = r.frame_idx + 1
            if n in marks:
                out[n] = {"rss_mib": rss_mib(), "host_tier_mib": s.bank.host_bytes / 2**20,
                          "seconds": time.perf_counter() - t0}
        s.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_upstream(ck, vid, image_size, marks):
    import numpy as np
    import torch

    from tests import model_utils

    pred = model_utils.upstream_predictor(Path(ck), image_size=image_size)
    st = pred.init_state(str(vid), offload_video_to_cpu=True, offload_state_to_cpu=True)
    pred.add_new_points_or_box(st, 0, 1, points=np.array([[40, 60]], np.float32), labels=np.array([1], np.int32))
    out = {}
    with torch.inference_mode():
        for f, _, _ in pred.propagate_in_video(st):
            if f + 1 in marks:
                out[f + 1] = {"rss_mib": rss_mib()}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--first", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--upstream", action="store_true")
    ap.add_argument("--child")
    a = ap.parse_args()
    ck, vid = assets(Path(a.out), a.frames, a.image_size)
    marks = {a.first, a.frames}
    if a.child:
        fn = run_samtrack if a.child == "samtrack" else run_upstream
        res = fn(ck, vid, a.image_size, marks)
        print(json.dumps({str(k): v for k, v in res.items()} | {"peak_rss_mib": peak_rss_mib()}))
        return
    for who in ["samtrack"] + (["upstream"] if a.upstream else []):
        r = subprocess.run([sys.executable, __file__, "--child", who, "--frames", str(a.frames), "--first", str(a.first),
                            "--image-size", str(a.image_size), "--out", a.out], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:])
            raise SystemExit(f"{who} failed")
        d = json.loads(r.stdout.strip().splitlines()[-1])
        lo, hi = d[str(a.first)], d[str(a.frames)]
        extra = f" (host tier {hi['host_tier_mib']:.1f} MiB, {a.frames / hi['seconds']:.1f} frames/s)" if "host_tier_mib" in hi else ""
        print(f"{who:>9}: RSS after {a.first} frames {lo['rss_mib']:.0f} MiB, after {a.frames} frames {hi['rss_mib']:.0f} MiB "
              f"-> difference {hi['rss_mib'] - lo['rss_mib']:+.0f} MiB{extra}", flush=True)
    print(f"image size {a.image_size}, random-init sam2.1 tiny, one object, CPU; target: samtrack difference < 100 MB")


if __name__ == "__main__":
    main()
