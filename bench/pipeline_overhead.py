"""Host work per frame per object in the session loop, outside the model.

Runs ``propagate`` with :class:`samtrack.session.backends.fake.FakeBackend` (every model output
precomputed, so the model costs nothing) on a generated 1080p video at image size 1024, and prints
the wall time per frame and per frame per object for 1 and 3 objects: frame reads and resizes,
memory bookkeeping, result and memory writes. Model-input preparation (read, bicubic resize to the
image size, normalize: on the GPU's side when there is one) is also shown apart, with what remains.
Goal (issue 12): at most 3 ms per frame per object.

    python bench/pipeline_overhead.py [--frames 200] [--size 1920x1080] [--image-size 1024]

Prints figures, never asserts. The frame cache is built before timing (a second run's state);
``--cold`` times decoding too.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--objects", default="1,3")
    ap.add_argument("--cold", action="store_true", help="do not build the frame cache before timing")
    ap.add_argument("--profile", action="store_true", help="print the top functions by own time")
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    import samtrack
    from samtrack.session.backends.fake import FakeBackend
    from tests import media

    w, h = map(int, a.size.split("x"))
    vid = Path(a.out) / f"overhead_{a.frames}_{w}x{h}.mp4"
    if not vid.exists():
        vid.parent.mkdir(parents=True, exist_ok=True)
        media.write_video(vid, a.frames, w=w, h=h, gop=30)
    print(f"video {vid.name}: {a.frames} frames {w}x{h}, image size {a.image_size}, fake (cost-free) model, CPU")
    print(f"{'objects':>8} {'frames/s':>9} {'ms/frame':>9} {'ms/frame/object':>16} {'input prep ms':>13} "
          f"{'other ms/fr':>12} {'other/object':>13}")
    for n_obj in map(int, a.objects.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="samtrack-overhead-"))
        try:
            if not a.cold:
                with samtrack.open_video(vid, workdir=tmp) as fs:
                    fs.build()
            backend = FakeBackend(a.image_size)
            s = samtrack.open_session(vid, backend=backend, workdir=tmp)
            prep = [0.0]  # seconds preparing model input (read + resize + normalize), on the device on a GPU
            real_input = s.frames.model_input

            def model_input(*args, **kw):
                t = time.perf_counter()
                try:
                    return real_input(*args, **kw)
                finally:
                    prep[0] += time.perf_counter() - t

            s.frames.model_input = model_input
            for k in range(n_obj):
                s.add_box(0, k + 1, [100 + 200 * k, 100, 300 + 200 * k, 400])
            prof = cProfile.Profile() if a.profile else None
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            n = sum(1 for _ in s.propagate("forward"))
            s.flush()
            dt = time.perf_counter() - t0
            if prof:
                prof.disable()
            s.close()
            ms = dt / n * 1000
            rest = (dt - prep[0]) / n * 1000
            print(f"{n_obj:>8} {n / dt:>9.1f} {ms:>9.2f} {ms / n_obj:>16.2f} {prep[0] / n * 1000:>13.2f} "
                  f"{rest:>12.2f} {rest / n_obj:>13.2f}")
            if prof:
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
                print(buf.getvalue())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
