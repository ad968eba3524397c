"""Host work per frame per object in the session loop, outside the model.

Runs ``propagate`` with :class:`samtrack.session.backends.fake.FakeBackend` (every model output
precomputed, so the model costs nothing) on a generated 1080p video at image size 1024, for 1 and
3 objects, and prints per frame:

- the wall time (with a cost-free model it is bounded by whichever thread is busier);
- the tracking thread's own work: memory views, bookkeeping, video-resolution masks, result and
  memory queues, flush requests; per object too, and the marginal cost of one more object. This is
  what sits beside a real model step. Shown two ways: wall time minus its waits for a model input
  (on a 2-core machine the prefetch and flush threads compete with it), and its CPU time
  (``time.thread_time``: what it costs when it has a core to itself).
- model-input preparation on the prefetch thread (frame cache read, uint8 bicubic resize,
  normalize), which overlaps the step of the frame before; next to it, upstream's own per-frame
  input cost in the same run (``sam2.utils.misc.load_video_frames`` on a JPEG folder of the same
  frames: JPEG decode, PIL resize, normalize), paid before upstream's first mask;
- the image features' writes to the feature store: by default the fake model hands the store
  SAM2-sized rows (8 MB of bfloat16 per frame at 1024 px, as a real encoder's), written on the
  store's writer thread; for the smallest object count the same run is repeated with the writes on
  the tracking thread (the baseline, as before session 9). ``--features tiny``: one tiny row.

Goal (issue 12): at most 3 ms per frame per object.

    python bench/pipeline_overhead.py [--frames 100] [--size 1920x1080] [--image-size 1024]

Prints figures, never asserts. The frame cache is built before timing (a second run's state);
``--cold`` times decoding too. ``--profile`` prints the tracking thread's top functions.
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

from _common import ROOT  # noqa: F401  (puts the repository on sys.path)


def _timed(fn, total: list):
    """``fn`` adding the seconds each call takes to ``total[0]``."""
    def call(*args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            total[0] += time.perf_counter() - t
    return call


def run_session(vid: Path, n_obj: int, image_size: int, cold: bool, profile: bool, features: str,
                inline_writes: bool = False) -> dict:
    import samtrack
    from samtrack.session.backends.fake import FakeBackend

    tmp = Path(tempfile.mkdtemp(prefix="samtrack-overhead-"))
    try:
        if not cold:
            with samtrack.open_video(vid, workdir=tmp) as fs:
                fs.build()
        s = samtrack.open_session(vid, backend=FakeBackend(image_size, sam2_sized_features=features == "sam2"),
                                  workdir=tmp)
        wait, prep = [0.0], [0.0]  # s the tracking thread waited for a model input; s spent preparing them
        s._model_input, s._host_input = _timed(s._model_input, wait), _timed(s._host_input, prep)
        written = [0.0]  # s spent writing feature shards (the writer thread, or inline)
        s.features.background = not inline_writes
        s.features._write = _timed(s.features._write, written)
        for k in range(n_obj):
            s.add_box(0, k + 1, [100 + 200 * k, 100, 300 + 200 * k, 400])
        wait[0] = prep[0] = 0.0
        prof = cProfile.Profile() if profile else None
        t0, c0 = time.perf_counter(), time.thread_time()
        if prof:
            prof.enable()
        n = sum(1 for _ in s.propagate("forward"))
        s.flush()
        dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
        if prof:
            prof.disable()
        dropped = s.features.stats["dropped_frames"]
        s.close()
        out = {"dropped": dropped, "n": n, "wall": dt / n * 1e3, "wait": wait[0] / n * 1e3, "busy": (dt - wait[0]) / n * 1e3,
               "prep": prep[0] / n * 1e3, "cpu": cpu / n * 1e3, "written": written[0] / n * 1e3}
        if prof:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
            out["profile"] = buf.getvalue()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upstream_input_ms(vid: Path, n: int, image_size: int) -> float:
    """ms per frame of upstream's loader (JPEG decode, PIL resize, normalize) on ``n`` frames of ``vid``."""
    import cv2
    import samtrack
    from sam2.utils.misc import load_video_frames

    tmp = Path(tempfile.mkdtemp(prefix="samtrack-overhead-jpg-"))
    try:
        with samtrack.open_video(vid, workdir=tmp / "w") as fs:
            (tmp / "jpg").mkdir()
            for i in range(n):
                cv2.imwrite(str(tmp / "jpg" / f"{i:05d}.jpg"), fs.read(i)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        t0 = time.perf_counter()
        load_video_frames(str(tmp / "jpg"), image_size, offload_video_to_cpu=True)
        return (time.perf_counter() - t0) / n * 1e3
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--objects", default="1,3")
    ap.add_argument("--cold", action="store_true", help="do not build the frame cache before timing")
    ap.add_argument("--profile", action="store_true", help="print the tracking thread's top functions by own time")
    ap.add_argument("--features", choices=("sam2", "tiny"), default="sam2",
                    help="feature rows stored per frame: SAM2's at this image size (default) or one tiny row")
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's loader prints a progress bar
    import torch

    from tests import media

    w, h = map(int, a.size.split("x"))
    vid = Path(a.out) / f"overhead_{a.frames}_{w}x{h}.mp4"
    if not vid.exists():
        vid.parent.mkdir(parents=True, exist_ok=True)
        media.write_video(vid, a.frames, w=w, h=h, gop=30)
    feat = ("SAM2-sized image features stored (3 FPN levels, bfloat16, "
            f"{(32 * 16 + 64 * 4 + 256) * (a.image_size // 16) ** 2 * 2 / 2**20:.1f} MB per frame)"
            if a.features == "sam2" else "one tiny feature row per frame")
    print(f"video {vid.name}: {a.frames} frames {w}x{h}, image size {a.image_size}, fake (cost-free) model, "
          f"CPU, {torch.get_num_threads()} torch threads; {feat}")
    print(f"{'objects':>8} {'frames/s':>9} {'wall ms/fr':>11} {'tracking thread ms/fr':>22} {'per object':>11} "
          f"{'its CPU ms/fr':>14} {'per object':>11} {'input prep ms/fr (bg)':>22} {'feature writes ms/fr (bg)':>26} {'not cached':>11}")
    runs = {}

    def row(label, r, n_obj):
        print(f"{label:>8} {1e3 / r['wall']:>9.1f} {r['wall']:>11.2f} {r['busy']:>22.2f} {r['busy'] / n_obj:>11.2f} "
              f"{r['cpu']:>14.2f} {r['cpu'] / n_obj:>11.2f} {r['prep']:>22.2f} {r['written']:>26.2f} {r['dropped']:>11}")

    for n_obj in map(int, a.objects.split(",")):
        r = runs[n_obj] = run_session(vid, n_obj, a.image_size, a.cold, a.profile, a.features)
        row(str(n_obj), r, n_obj)
        if a.profile:
            print(r["profile"])
    if a.features == "sam2":
        n_obj = min(runs)
        base = run_session(vid, n_obj, a.image_size, a.cold, False, a.features, inline_writes=True)
        print(f"baseline, the same run with feature shards written on the tracking thread (as before session 9), "
              f"{n_obj} object(s):")
        row(str(n_obj), base, n_obj)
        print(f"tracking thread: {base['busy'] / runs[n_obj]['busy']:.1f}x less time per frame with the writer "
              f"thread ({runs[n_obj]['busy']:.2f} vs {base['busy']:.2f} ms)")
    if len(runs) >= 2:
        (n1, r1), (n2, r2) = min(runs.items()), max(runs.items())
        print(f"one more object costs {(r2['busy'] - r1['busy']) / (n2 - n1):.2f} ms per frame on the tracking thread "
              f"({(r2['cpu'] - r1['cpu']) / (n2 - n1):.2f} ms of its CPU time)")
    up = upstream_input_ms(vid, min(a.frames, 50), a.image_size)
    prep = sum(r["prep"] for r in runs.values()) / len(runs)
    print(f"model input per frame: samtrack {prep:.2f} ms (on the prefetch thread, overlapping the step before), "
          f"upstream's loader {up:.2f} ms (before its first mask): {up / prep:.2f}x less")
    print("goal (issue 12): tracking thread <= 3 ms per frame per object. 'not cached': frames whose features "
          "were dropped because the writer thread was behind (the loop never waits for the cache)")


if __name__ == "__main__":
    main()
