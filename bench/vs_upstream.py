"""samtrack vs upstream on the same video, weights and prompts: SAM2VideoPredictor for SAM2/SAM2.1,
SAM3's tracker predictor (``Sam3TrackerPredictor``, fed by its own frame loader) for ``--model sam3``.

For 1 and 3 objects prints, per implementation: time to the first mask (model
build + video open + first prompt), tracking FPS over the whole video, peak
host RSS, peak device memory, and samtrack/upstream ratios. Each run is its
own subprocess; the model is built first (timed apart), then, on a GPU, a
16-frame warm-up run as upstream's own benchmark does, then the timed run. CPU default: random-init sam2.1 tiny at 256 px on a generated
160x120 clip. On a GPU: --device cuda --image-size 1024 --frames 1000
--size 1280x720 --source jpeg (pass --checkpoint for real weights).

``--model sam3``: without --checkpoint, a random-init SAM3 of the "tiny" width preset (tests/sam3_models.py;
the full-width encoder takes ~25 s per frame on a 2-core CPU) at --image-size (default 112 on the CPU);
upstream reads a JPEG folder (its loader decodes every frame first), samtrack the same folder.
On a GPU with the real checkpoint: --model sam3 --checkpoint sam3.pt --width full --image-size 1008.

``--cuda-graphs both`` (SAM2 on CUDA) runs samtrack twice, eager and replaying its tracking step from
CUDA graphs (SessionConfig.cuda_graphs), and prints both against upstream with the graphs' counts
(captured / replayed / self-checks, and whether they stayed on).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import assets, jpeg_folder, peak_rss_mib, random_checkpoint, random_sam3_checkpoint

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


def _load_samtrack(ck, a):
    import samtrack.session as ss

    if a.model != "sam3":
        return ss.load_model(a.model, checkpoint=ck, image_size=a.image_size, device=a.device)
    from samtrack.session.backends import load_backend
    from samtrack.session.models import get_model

    return load_backend(get_model("sam3"), ck, image_size=a.image_size, device=a.device, width=a.width)


def run_samtrack(ck, vid, a, n_obj, warm_vid):
    import tempfile

    import samtrack.session as ss

    t0 = time.perf_counter()
    backend = _load_samtrack(ck, a)
    _sync(a.device)
    load = time.perf_counter() - t0

    graphs = {"auto": None, "on": True, "off": False}[a.cuda_graphs]

    workdirs = []  # removed at the end: each holds a session's cached frames and memory (GBs at 1,000 frames)

    def session(v):
        workdirs.append(tempfile.mkdtemp(prefix="samtrack-vs-"))
        s = ss.open_session(v, backend=backend, workdir=workdirs[-1],
                            config=ss.SessionConfig(cuda_graphs=graphs))
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
    for wd in workdirs:
        shutil.rmtree(wd, ignore_errors=True)
    tracker = getattr(backend, "_graphs", None)
    return {"model_load_s": load, "first_mask_s": first, "fps": fps, "peak_rss_mib": peak_rss_mib(),
            "device_peak_mib": _device_peak(a.device),
            "graphs": None if tracker is None else {**tracker.stats, "enabled": tracker.enabled}}


def run_upstream_sam3(ck, vid, a, n_obj, warm_vid):
    """SAM3's tracker predictor as its users drive it: init_state(video_path=) decodes every frame,
    one inference state holds every object (batched), propagate_in_video forward from frame 0."""
    import contextlib

    import numpy as np
    import torch

    from samtrack.session.backends import sam3_build, sam3_compat

    t0 = time.perf_counter()
    model = sam3_build.build_video_model(a.image_size, a.width)
    sd = torch.load(ck, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(sd, strict=True)
    tracker = model.tracker
    tracker.backbone = model.detector.backbone  # as build_tracker(with_backbone=True) has it
    tracker = tracker.to(a.device).eval()
    _sync(a.device)
    load = time.perf_counter() - t0
    on_cpu = a.device == "cpu"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if a.device == "cuda" else contextlib.nullcontext()
    compat = sam3_compat.upstream_on(a.device) if on_cpu else contextlib.nullcontext()

    def prompt(v):
        st = tracker.init_state(video_path=str(v), offload_video_to_cpu=on_cpu, offload_state_to_cpu=on_cpu)
        h, w = st["video_height"], st["video_width"]
        for k in range(n_obj):
            x, y = _pts(k, w, h)[0]
            tracker.add_new_points_or_box(st, 0, k + 1, points=np.array([[x / w, y / h]], np.float32),
                                          labels=np.array([1], np.int32))
        return st

    def run(st):
        return sum(1 for _ in tracker.propagate_in_video(st, 0, None, reverse=False, tqdm_disable=True,
                                                         propagate_preflight=True))

    with torch.inference_mode(), ctx, compat:
        if warm_vid is not None:
            run(prompt(warm_vid))
        _reset_peak(a.device)
        t0 = time.perf_counter()
        st = prompt(vid)
        _sync(a.device)
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = run(st)
        _sync(a.device)
        fps = n / (time.perf_counter() - t1)
    return {"model_load_s": load, "first_mask_s": first, "fps": fps, "peak_rss_mib": peak_rss_mib(),
            "device_peak_mib": _device_peak(a.device)}


def run_upstream(ck, vid, a, n_obj, warm_vid):
    if a.model == "sam3":
        return run_upstream_sam3(ck, vid, a, n_obj, warm_vid)
    import contextlib

    import numpy as np
    import torch

    from tests import model_utils

    t0 = time.perf_counter()
    if a.device == "cpu" and a.model == "sam2.1_hiera_tiny":
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
    ap.add_argument("--image-size", type=int, default=None, help="default 256 (sam2), 112 (sam3 tiny on the CPU)")
    ap.add_argument("--width", default="tiny", help="sam3 only: width preset of a random-init model (tiny, full)")
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="sam2.1_hiera_tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--source", choices=("mp4", "jpeg"), default="mp4",
                    help="mp4 (upstream decodes it with decord) or a JPEG folder (upstream's native input)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="frames of a warm-up run before timing (default 16 on cuda, 0 on cpu)")
    ap.add_argument("--cuda-graphs", choices=("auto", "on", "off", "both"), default="auto",
                    help="samtrack's SessionConfig.cuda_graphs (auto: on with CUDA); both: one run each, off and on")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.device == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as upstream's bench
    w, h = map(int, a.size.split("x"))
    warm = a.warmup if a.warmup is not None else (16 if a.device == "cuda" else 0)
    sam3 = a.model == "sam3"
    if a.image_size is None:
        a.image_size = (112 if a.device == "cpu" else 1008) if sam3 else 256
    if sam3:
        a.source = "jpeg"  # upstream's tracker predictor reads a JPEG folder (or an mp4 through decord)
    ck = a.checkpoint or (random_sam3_checkpoint(Path(a.out), a.image_size, a.width) if sam3
                          else random_checkpoint(Path(a.out), a.image_size, a.model))
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
    what = f"{a.model} ({a.width} width)" if sam3 and not a.checkpoint else a.model
    print(f"{a.frames} frames {w}x{h} ({a.source}), {what} at {a.image_size} px on {a.device}, "
          f"warm-up {warm} frames")
    ours = {"both": ["off", "on"]}.get(a.cuda_graphs, [a.cuda_graphs])
    for n_obj in a.objects:
        rows = {}
        for who, graphs in [("upstream", "auto")] + [("samtrack", g) for g in ours]:
            args = [sys.executable, __file__, "--child", who, str(n_obj), "--frames", str(a.frames), "--image-size",
                    str(a.image_size), "--size", a.size, "--device", a.device, "--model", a.model, "--out", a.out,
                    "--source", a.source, "--warmup", str(warm), "--width", a.width, "--cuda-graphs", graphs]
            if a.checkpoint:
                args += ["--checkpoint", a.checkpoint]
            r = subprocess.run(args, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-3000:])
                raise SystemExit(f"{who} failed")
            rows[who if who == "upstream" else f"samtrack (graphs {graphs})"] = json.loads(r.stdout.strip().splitlines()[-1])
        u = rows.pop("upstream")
        print(f"{n_obj} object(s):")
        for label, s in rows.items():
            if len(rows) > 1 or s.get("graphs"):
                print(f" {label}: graphs {s.get('graphs')}")
            for name, key, fmt in (("model load (s)", "model_load_s", "{:.2f}"),
                                   ("video open to 1st mask (s)", "first_mask_s", "{:.2f}"),
                                   ("tracking FPS", "fps", "{:.2f}"), ("peak host RSS (MiB)", "peak_rss_mib", "{:.0f}"),
                                   ("peak device mem (MiB)", "device_peak_mib", "{:.0f}")):
                ratio = s[key] / u[key] if u[key] == u[key] and u[key] else float("nan")
                print(f"  {name:<27} upstream {fmt.format(u[key]):>8}  samtrack {fmt.format(s[key]):>8}  "
                      f"ratio {ratio:.2f}")

if __name__ == "__main__":
    main()
