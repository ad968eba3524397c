"""samtrack vs upstream SAM2VideoPredictor on the same video, weights and prompts.

For 1 and 3 objects prints, per implementation: time to the first mask (model
build + video open + first prompt), tracking FPS over the whole video, peak
host RSS, peak device memory, and samtrack/upstream ratios. Each run is its
own subprocess; the model is built first (timed apart), then, on a GPU, a
16-frame warm-up run as upstream's own benchmark does, then the timed run. CPU default: random-init sam2.1 tiny at 256 px on a generated
160x120 clip. On a GPU: --device cuda --image-size 1024 --frames 1000
--size 1280x720 --source jpeg (pass --checkpoint for real weights).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import assets, jpeg_folder, peak_rss_mib, random_checkpoint

POINTS = [[40, 60], [100, 40], [120, 90], [60, 100], [20, 20]]


def _pts(k, w, h):
    x, y = POINTS[k % len(POINTS)]
    return [[x * w / 160, y * h / 120]]


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _device_peak(device):
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")


def _reset_peak(device):
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def run_samtrack(ck, vid, a, n_obj, warm_vid):
    import tempfile

    import samtrack.session as ss

    t0 = time.perf_counter()
    backend = ss.load_model(a.model, checkpoint=ck, image_size=a.image_size, device=a.device)
    _sync(a.device)
    load = time.perf_counter() - t0

    def session(v):
        s = ss.open_session(v, backend=backend, workdir=tempfile.mkdtemp(prefix="samtrack-vs-"))
        for k in range(n_obj):
            s.add_points(0, k + 1, _pts(k, s.width, s.height), [1])
        return s

    if warm_vid is not None:  # same warm-up as upstream's: CUDA kernels, cuDNN plans
        s = session(warm_vid)
        for _ in s.propagate("forward"):
            pass
        s.close()
    _reset_peak(a.device)
    t0 = time.perf_counter()
    s = session(vid)
    _sync(a.device)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = sum(1 for _ in s.propagate("forward"))
    _sync(a.device)
    fps = n / (time.perf_counter() - t1)
    s.close()
    return {"model_load_s": load, "first_mask_s": first, "fps": fps, "peak_rss_mib": peak_rss_mib(),
            "device_peak_mib": _device_peak(a.device)}


def run_upstream(ck, vid, a, n_obj, warm_vid):
    import contextlib

    import numpy as np
    import torch

    from tests import model_utils

    t0 = time.perf_counter()
    if a.device == "cpu":
        pred = model_utils.upstream_predictor(Path(ck), image_size=a.image_size)
    else:
        from sam2.build_sam import build_sam2_video_predictor

        from samtrack.session.backends.sam2_backend import hydra_overrides
        from samtrack.session.models import get_model

        pred = build_sam2_video_predictor(get_model(a.model).config, str(ck), device=a.device,
                                          hydra_overrides_extra=hydra_overrides(a.image_size)[6:])
    _sync(a.device)
    load = time.perf_counter() - t0
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if a.device == "cuda" else contextlib.nullcontext()

    def prompt(v):
        st = pred.init_state(str(v))
        h, w = st["video_height"], st["video_width"]
        for k in range(n_obj):
            pred.add_new_points_or_box(st, 0, k + 1, points=np.array(_pts(k, w, h), np.float32),
                                       labels=np.array([1], np.int32))
        return st

    with torch.inference_mode(), ctx:
        if warm_vid is not None:
            st = prompt(warm_vid)
            for _ in pred.propagate_in_video(st):
                pass
            del st
        _reset_peak(a.device)
        t0 = time.perf_counter()
        st = prompt(vid)
        _sync(a.device)
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = sum(1 for _ in pred.propagate_in_video(st))
        _sync(a.device)
        fps = n / (time.perf_counter() - t1)
    return {"model_load_s": load, "first_mask_s": first, "fps": fps, "peak_rss_mib": peak_rss_mib(),
            "device_peak_mib": _device_peak(a.device)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="sam2.1_hiera_tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--source", choices=("mp4", "jpeg"), default="mp4",
                    help="mp4 (upstream decodes it with decord) or a JPEG folder (upstream's native input)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="frames of a warm-up run before timing (default 16 on cuda, 0 on cpu)")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.device == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as upstream's bench
    w, h = map(int, a.size.split("x"))
    warm = a.warmup if a.warmup is not None else (16 if a.device == "cuda" else 0)
    ck = a.checkpoint or random_checkpoint(Path(a.out), a.image_size)
    warm_vid = None
    if a.source == "jpeg":
        vid = jpeg_folder(Path(a.out), a.frames, w, h)
        warm_vid = jpeg_folder(Path(a.out), warm, w, h) if warm else None
    else:
        vid = assets(Path(a.out), a.frames, a.image_size, w, h)[1]
        warm_vid = assets(Path(a.out), warm, a.image_size, w, h)[1] if warm else None
    if a.child:
        who, n_obj = a.child
        fn = run_samtrack if who == "samtrack" else run_upstream
        print(json.dumps(fn(ck, vid, a, int(n_obj), warm_vid)))
        return
    print(f"{a.frames} frames {w}x{h} ({a.source}), {a.model} at {a.image_size} px on {a.device}, "
          f"warm-up {warm} frames")
    for n_obj in a.objects:
        rows = {}
        for who in ("upstream", "samtrack"):
            args = [sys.executable, __file__, "--child", who, str(n_obj), "--frames", str(a.frames), "--image-size",
                    str(a.image_size), "--size", a.size, "--device", a.device, "--model", a.model, "--out", a.out,
                    "--source", a.source, "--warmup", str(warm)]
            if a.checkpoint:
                args += ["--checkpoint", a.checkpoint]
            r = subprocess.run(args, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-3000:])
                raise SystemExit(f"{who} failed")
            rows[who] = json.loads(r.stdout.strip().splitlines()[-1])
        u, s = rows["upstream"], rows["samtrack"]
        print(f"{n_obj} object(s):")
        for name, key, fmt in (("model load (s)", "model_load_s", "{:.2f}"),
                               ("video open to 1st mask (s)", "first_mask_s", "{:.2f}"), ("tracking FPS", "fps", "{:.2f}"),
                               ("peak host RSS (MiB)", "peak_rss_mib", "{:.0f}"), ("peak device mem (MiB)", "device_peak_mib", "{:.0f}")):
            ratio = s[key] / u[key] if u[key] == u[key] and u[key] else float("nan")
            print(f"  {name:<27} upstream {fmt.format(u[key]):>8}  samtrack {fmt.format(s[key]):>8}  ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
