"""`samtrack batch` throughput: N short videos with 1 and 2 local workers and on Ray (tasks and actors),
against tracking the same videos one after another in one process with one loaded model.

    python bench/batch.py [--videos 8] [--frames 8] [--size 128x96] [--image-size 128]
                          [--workers 1,2] [--devices cpu] [--threads 1] [--repeat 2] [--no-ray]

Prints, per mode: total wall time, videos per hour, and the overhead per video against the one-process
baseline ((T_mode - T_baseline) / N; negative: parallel workers were faster). Every process tracks with
``--threads`` torch threads (the baseline too), each mode runs ``--repeat`` times and its fastest run is
shown (other work on a shared machine only ever slows a run down). The Ray cluster's start is
timed apart (``ray.init`` on 127.0.0.1, no dashboard) and not counted in the Ray rows. On a GPU machine,
``--devices cuda:0 --workers 1,2,4`` gives 1 and several workers per GPU. Random-init SAM2.1 tiny;
figures, never asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from _common import ROOT, random_checkpoint  # noqa: F401  (puts the repository on sys.path)


def make_videos(d: Path, n: int, frames: int, w: int, h: int) -> Path:
    from tests import media

    folder = d / f"videos_{n}x{frames}_{w}x{h}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        media.write_video(folder / f"v{k:03d}.mp4", frames, w=w, h=h,
                          frames=[media.frame_pattern(i, h, w, seed=k) for i in range(frames)])
        (folder / f"v{k:03d}.json").write_text(json.dumps({"objects": [
            {"id": 1, "prompts": [{"frame": 0, "points": [[w // 4, h // 2]], "labels": [1]}]},
            {"id": 2, "prompts": [{"frame": 0, "box": [w // 2, h // 4, w - 4, h - 4]}]}]}))
    (folder / "done").write_text("ok")
    return folder


def baseline(folder: Path, out: Path, ck: Path, image_size: int, device: str) -> tuple[float, float]:
    """(seconds for every video one after another in this process, seconds of that loading the model)."""
    from samtrack.job import start_track
    from samtrack.session import load_model

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    backend = load_model(checkpoint=ck, image_size=image_size, device=device)
    t_load = time.perf_counter() - t0
    for v in sorted(folder.glob("*.mp4")):
        session, start = start_track(v, v.with_suffix(".json"), out / v.stem, backend=backend, direction="forward")
        try:
            for _ in session.propagate("forward"):
                pass
        finally:
            session.close()
    return time.perf_counter() - t0, t_load


def run(folder: Path, out: Path, ck: Path, image_size: int, **kw) -> tuple[float, object]:
    from samtrack.batch import RowDefaults, run_batch

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rep = run_batch(folder, out, defaults=RowDefaults(checkpoint=str(ck), image_size=image_size, direction="forward"),
                    **kw)
    assert not rep.failed, [v.error for v in rep.failed]
    return time.perf_counter() - t0, rep


def start_ray(tmp: Path) -> float:
    token = tmp / "auth_token"
    token.write_text(uuid.uuid4().hex)
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",
                      RAY_AUTH_TOKEN_PATH=str(token))
    t0 = time.perf_counter()
    import ray

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(tmp / "r"), log_to_driver=False,
             configure_logging=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="128x96")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--devices", default="cpu", help="local devices, comma-separated (cuda:0 on a GPU machine)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (baseline and workers)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode; the fastest is shown")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    out = Path(a.out)
    ck = random_checkpoint(out, a.image_size)
    folder = make_videos(out, a.videos, a.frames, w, h)
    work = Path(tempfile.mkdtemp(prefix="st-bench-", dir="/tmp"))
    n = a.videos
    rows = []
    device = a.devices.split(",")[0]
    import torch

    torch.set_num_threads(a.threads)
    best = lambda f: min((f() for _ in range(a.repeat)), key=lambda r: r[0])  # noqa: E731
    try:
        t_seq, t_load = best(lambda: baseline(folder, work / "seq", ck, a.image_size, device))
        rows.append(("one process, one model (baseline)", t_seq, ""))
        for k in map(int, a.workers.split(",")):
            t, rep = best(lambda: run(folder, work / f"local{k}", ck, a.image_size, workers=k,
                                      devices=a.devices.split(","), threads=a.threads))
            rows.append((f"local, {k} worker(s) on {a.devices}", t, f"{rep.workers_started} processes"))
        if not a.no_ray:
            t_init = start_ray(work)
            for mode in ("tasks", "actors"):
                t, rep = best(lambda: run(folder, work / f"ray_{mode}", ck, a.image_size, executor="ray", mode=mode,
                                          cpus_per_video=a.threads))
                rows.append((f"ray {mode}", t, f"{rep.workers_started} actors" if mode == "actors" else
                             "one task per video"))
            import ray

            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{n} videos x {a.frames} frames, {w}x{h}, image size {a.image_size}, 2 objects, device {a.devices}, "
          f"{os.cpu_count()} CPU cores, {a.threads} torch thread(s) per process, fastest of {a.repeat} run(s); "
          f"baseline model load {t_load:.1f} s")
    if not a.no_ray:
        print(f"ray.init (local cluster, not counted below): {t_init:.1f} s")
    print(f"{'mode':38} {'total s':>8} {'videos/h':>9} {'overhead/video s':>17}")
    for name, t, note in rows:
        print(f"{name:38} {t:8.1f} {n / t * 3600:9.0f} {(t - t_seq) / n:17.2f}  {note}")


if __name__ == "__main__":
    main()
