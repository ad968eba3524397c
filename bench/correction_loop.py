"""The correction loop: from a click on frame C to the end of re-propagation, samtrack against
upstream ``SAM2VideoPredictor`` (built with ``add_all_frames_to_correct_as_cond=True`` so the click
sticks, re-propagating from C in both directions as its users do), in one run.

Setting (issue 12): CPU, random-init sam2.1 tiny at 512 px, a generated 720p video of 200 frames,
keyframes at 0 and 199, one object, a correction on frame 100. Both sides first track the whole
video (not timed); then the correction is timed. samtrack is also timed on a reopened job (a new
process: empty RAM caches, image features from the work folder). samtrack's time is split into
image encoder, tracking step (the backend's track/prompt/memory calls) and everything else (host).

    python bench/correction_loop.py [--frames 200] [--image-size 512] [--size 1280x720] [--correct 100]

Prints figures, never asserts.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import random_checkpoint

CLICK = [[0.5, 0.5]]  # relative (x, y) of the object's first click
FIX = [[0.55, 0.45]]  # relative (x, y) of the correction


def _pts(rel, w, h):
    return [[x * w, y * h] for x, y in rel]


class Timed:
    """Wraps a backend: seconds spent in the image encoder and in the other model calls."""

    def __init__(self, backend):
        self.b, self.enc, self.step = backend, 0.0, 0.0
        for name in ("track", "prompt", "encode_memory"):
            setattr(self, name, self._wrap(getattr(backend, name), "step"))
        self.encode_image = self._wrap(backend.encode_image, "enc")

    def _wrap(self, fn, kind):
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                setattr(self, kind, getattr(self, kind) + time.perf_counter() - t0)
        return call

    def __getattr__(self, name):
        return getattr(self.b, name)


def correct(s, a) -> dict:
    """Time one correction on frame ``a.correct`` and its re-propagation in a samtrack session."""
    timed = Timed(s.backend)
    s.backend = timed
    t0 = time.perf_counter()
    s.add_points(a.correct, 1, _pts(FIX, s.width, s.height), [1])
    n = sum(1 for _ in s.propagate("both"))
    total = time.perf_counter() - t0
    return {"total_s": total, "encoder_s": timed.enc, "step_s": timed.step, "host_s": total - timed.enc - timed.step,
            "frames_yielded": n, "encoded": timed.b.calls["encode_image"].total()}


def samtrack_phase(a, ck, vid, wd, phase):
    import samtrack

    s = samtrack.open_session(vid, checkpoint=ck, image_size=a.image_size, device="cpu", workdir=wd)
    try:
        if phase == "first":
            s.add_points(0, 1, _pts(CLICK, s.width, s.height), [1])
            s.add_points(a.frames - 1, 1, _pts(CLICK, s.width, s.height), [1])
            t0 = time.perf_counter()
            list(s.propagate("both"))
            track_s = time.perf_counter() - t0
            s.backend.calls["encode_image"].clear()
            out = correct(s, a)
            out["initial_tracking_s"] = track_s
            return out
        s.clear_prompts(a.correct, 1)  # back to the state before the correction, then the same click again
        list(s.propagate("both"))
        s.backend.calls["encode_image"].clear()
        return correct(s, a)
    finally:
        s.close()


def upstream(a, ck, vid_dir) -> dict:
    import numpy as np
    import torch

    from tests import model_utils

    pred = model_utils.upstream_predictor(Path(ck), image_size=a.image_size, correct_as_cond=True)
    with torch.inference_mode():
        st = pred.init_state(str(vid_dir))
        h, w = st["video_height"], st["video_width"]
        for f in (0, a.frames - 1):
            pred.add_new_points_or_box(st, f, 1, points=np.array(_pts(CLICK, w, h), np.float32),
                                       labels=np.array([1], np.int32))
        t0 = time.perf_counter()
        for _ in pred.propagate_in_video(st):
            pass
        for _ in pred.propagate_in_video(st, reverse=True):
            pass
        track_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred.add_new_points_or_box(st, a.correct, 1, points=np.array(_pts(FIX, w, h), np.float32),
                                   labels=np.array([1], np.int32))
        n = 0
        for _ in pred.propagate_in_video(st, start_frame_idx=a.correct):
            n += 1
        for _ in pred.propagate_in_video(st, start_frame_idx=a.correct, reverse=True):
            n += 1
        return {"total_s": time.perf_counter() - t0, "frames_yielded": n, "initial_tracking_s": track_s}


def main():
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # upstream prints a progress bar per propagation
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--correct", type=int, default=None)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # internal: the reopened-job process
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.correct = a.frames // 2 if a.correct is None else a.correct
    from _common import jpeg_folder

    w, h = map(int, a.size.split("x"))
    ck = random_checkpoint(Path(a.out), a.image_size)
    jpg = jpeg_folder(Path(a.out), a.frames, w, h)
    if a.phase == "reopen":
        print(json.dumps(samtrack_phase(a, ck, jpg, a.workdir, "reopen")))
        return
    wd = tempfile.mkdtemp(prefix="samtrack-correction-")
    print(f"{a.frames} frames {w}x{h} (JPEG folder), image size {a.image_size}, random-init sam2.1 tiny, CPU; "
          f"keyframes 0 and {a.frames - 1}, correction on frame {a.correct}")
    ours = samtrack_phase(a, ck, jpg, wd, "first")
    r = subprocess.run([sys.executable, __file__, "--phase", "reopen", "--workdir", wd, "--frames", str(a.frames),
                        "--image-size", str(a.image_size), "--size", a.size, "--correct", str(a.correct),
                        "--out", a.out], capture_output=True, text=True, check=True)
    reopened = json.loads(r.stdout.strip().splitlines()[-1])
    theirs = upstream(a, ck, jpg)
    print(f"initial tracking (both directions): samtrack {ours['initial_tracking_s']:.1f} s, "
          f"upstream {theirs['initial_tracking_s']:.1f} s (not part of the loop)")
    print(f"{'':>24} {'correction loop':>16} {'encoder':>9} {'step':>9} {'host':>9} {'encoded':>8} {'frames':>7}")
    for name, d in (("samtrack", ours), ("samtrack, reopened job", reopened)):
        print(f"{name:>24} {d['total_s']:>14.1f} s {d['encoder_s']:>7.1f} s {d['step_s']:>7.1f} s "
              f"{d['host_s']:>7.1f} s {d['encoded']:>8} {d['frames_yielded']:>7}")
    print(f"{'upstream':>24} {theirs['total_s']:>14.1f} s {'':>9} {'':>9} {'':>9} {'':>8} {theirs['frames_yielded']:>7}")
    print(f"samtrack vs upstream: {theirs['total_s'] / ours['total_s']:.1f}x faster "
          f"({theirs['total_s'] / reopened['total_s']:.1f}x on the reopened job)")


if __name__ == "__main__":
    main()
