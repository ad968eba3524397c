"""Propagation in a thread of its own after prompts on another thread (the viewer, the server), CPU.

The viewer prompts on its UI thread and propagates in a worker thread; the server prompts on a
request thread and propagates in a job thread. A thread that once ran a parallel torch op keeps
an OpenMP team (idle worker threads) while it lives, and libgomp, managing more threads than there
are cores, then makes every team's workers sleep almost at once between parallel regions, so the
tracking step's many small regions each pay a wake-up. Session entry points now end the calling
thread's team when they return (``samtrack.session.devices.release_openmp_team``).

Runs, alternating for ``--rounds``, the re-propagation after a correction on frame 0 (features
cached, so only tracking steps are timed) three ways in one process:

- ``one thread``: prompt and propagate on the main thread (the CLI; the baseline);
- ``split, teams released``: prompt on the main thread, propagate in a new thread (as now);
- ``split, teams kept``: the same with the release turned off (as before session 11).

and prints ms per frame and each split setting's ratio to the baseline. Prints figures, never
asserts. Random-init SAM2.1 tiny (``--image-size``, default 256), a generated video.

    python bench/propagation_threads.py [--frames 40] [--image-size 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, assets  # noqa: F401  (ROOT puts the repository on sys.path)


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), name="propagation")
    t.start()
    t.join()
    if not out:
        raise SystemExit("the propagation thread failed (its traceback is above)")
    return out[0]


def _repropagate(s) -> float:
    """Seconds per frame of a forward re-propagation over the whole video."""
    t = time.perf_counter()
    n = sum(1 for _ in s.propagate("forward"))
    return (time.perf_counter() - t) / max(n, 1)


def main():
    import torch

    import samtrack
    from samtrack.session import devices

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    ck, vid = assets(Path(a.out), a.frames, a.image_size, w=320, h=240)
    real_release = devices.release_openmp_team
    tmp = Path(tempfile.mkdtemp(prefix="samtrack-threads-"))
    times: dict[str, list[float]] = {"one thread": [], "split, teams released": [], "split, teams kept": []}
    click = [[160, 120]]
    try:
        s = samtrack.open_session(vid, checkpoint=ck, image_size=a.image_size, device="cpu", workdir=tmp / "w")
        try:
            s.add_points(0, 1, click, [1])
            sum(1 for _ in s.propagate("forward"))  # every frame's features cached: only steps are timed below
            for r in range(a.rounds):
                for name in times:
                    real_release()  # no team left over from the setting before
                    devices.release_openmp_team = (lambda: False) if name.endswith("kept") else real_release
                    click = [[160 + (r % 3) - 1, 120]]  # a correction on frame 0: every later frame again
                    s.add_points(0, 1, click, [1])  # on the main thread (the CLI; the UI; a request)
                    if name == "one thread":
                        sec = _repropagate(s)
                    else:
                        sec = _in_thread(lambda: _repropagate(s))
                    times[name].append(sec)
                    print(f"round {r + 1}: {name:<22} {sec * 1e3:7.1f} ms/frame", flush=True)
        finally:
            devices.release_openmp_team = real_release
            s.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["one thread"])
    print(f"\n{a.frames} frames, {a.image_size} px, random-init sam2.1 tiny, CPU, {torch.get_num_threads()} torch "
          f"threads, median of {a.rounds} rounds:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<22} {med * 1e3:7.1f} ms/frame   {med / base:5.2f}x the one-thread time")


if __name__ == "__main__":
    main()
