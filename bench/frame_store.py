"""Frame store figures on a generated 1080p H.264 video of 1,000 and 10,000 frames.

Prints, for each length: time to the first model-ready frame (open + decode +
resize to 1024 + normalize), peak RSS of the process, and sequential read
throughput as a ratio to raw PyAV decoding (decode + RGB conversion) measured
in the same run, against two baselines: the plain ``to_ndarray`` loop and
samtrack's own conversion without the cache. Sequential reading is measured
three ways: ``iter_frames`` on a cold cache (the streaming path), ``read(i)``
in order on a cold cache (the session's path: background decode, every chunk
persisted), and ``iter_frames`` over frames already cached. Each measurement
runs in its own subprocess so that peak RSS is its own.
Usage: python bench/frame_store.py [--lengths 1000 10000] [--warm-frames 1000] [--out bench_out]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

W, H = 1920, 1080


def make_video(path: Path, n: int) -> None:
    import av

    if path.exists():
        return
    tmp = path.with_suffix(".part.mp4")
    c = av.open(str(tmp), "w")
    s = c.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    s.options = {"preset": "ultrafast", "g": "60", "crf": "23"}
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([(x * 255 // W), (y * 255 // H), np.full_like(x, 90)], -1).astype(np.uint8)
    for i in range(n):
        img = base.copy()
        cx = (i * 7) % (W - 200)
        img[400:600, cx:cx + 200] = (255, 255, 255)
        img[0:40, 0:40 * 14] = 0
        for b in range(14):
            if (i >> b) & 1:
                img[0:40, b * 40:(b + 1) * 40] = 255
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    tmp.rename(path)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_raw(path: str, mode: str, limit: str = "0") -> dict:
    """Decode + RGB conversion with PyAV alone, in a fresh process.

    ``plain``: ``frame.to_ndarray(format="rgb24")``, the loop a user writes (no
    samtrack import, so glibc's allocator is left at its defaults).
    ``tuned``: what samtrack's reader does without its cache: one reused
    swscale context, explicit colour range, glibc tuned to recycle frame buffers.
    """
    import av

    limit_n = int(limit) or None

    def convert(f):
        return f.to_ndarray(format="rgb24")

    if mode == "tuned":
        from av.video.reformatter import VideoReformatter

        from samtrack.io.readers._alloc import keep_large_buffers
        from samtrack.io.readers.video_pyav import frame_to_rgb

        keep_large_buffers()
        ref = VideoReformatter()

        def convert(f):  # noqa: F811
            return frame_to_rgb(f, ref)

    t0 = time.perf_counter()
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for f in c.decode(s):
            convert(f)
            n += 1
            if n == limit_n:
                break
    dt = time.perf_counter() - t0
    return {"frames": n, "seconds": dt, "fps": n / dt, "peak_rss_mib": _peak_rss_mib()}


def child_store(path: str, workdir: str, warm_frames: str) -> dict:
    """First model-ready frame, a cold sequential pass, then a pass over a persisted stretch."""
    ti = time.perf_counter()
    import av  # noqa: F401  (library imports are timed apart from the first frame)
    import torch  # noqa: F401
    import zarr  # noqa: F401

    import samtrack
    import samtrack.io  # noqa: F401

    imports_s = time.perf_counter() - ti
    libs_rss = _peak_rss_mib()
    t0 = time.perf_counter()
    fs = samtrack.open_video(path, workdir=workdir)
    x = fs.model_input(0, 1024)
    first = time.perf_counter() - t0
    assert x.shape == (3, 1024, 1024)
    n = len(fs)
    t1 = time.perf_counter()
    for i, frame in fs.iter_frames():
        pass
    cold = time.perf_counter() - t1
    persisted = n - fs.stats["unpersisted_chunks"] * fs.chunk_frames
    fs.close()
    # read() in order over the first stretch: the builder thread decodes ahead and
    # persists every chunk (this is how a tracking session reads)
    m = min(n, int(warm_frames))
    fs2 = samtrack.open_video(path, workdir=workdir + "_reads")
    t2 = time.perf_counter()
    for i in range(m):
        fs2.read(i)
    reads = time.perf_counter() - t2
    fs2.flush()
    t3 = time.perf_counter()
    for i, frame in fs2.iter_frames(0, m):
        pass
    warm = time.perf_counter() - t3
    fs2.close()
    return {"first_model_frame_s": first, "frames": n, "cold_fps": n / cold, "persisted_frames": max(persisted, 0),
            "read_fps": m / reads, "warm_fps": m / warm, "warm_frames": m, "peak_rss_mib": _peak_rss_mib(),
            "libs_rss_mib": libs_rss, "imports_s": imports_s}


def run_child(*args: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--warm-frames", type=int, default=1000, help="frames read through read() and then re-read from the cache")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        print(json.dumps(child_raw(*rest) if kind == "raw" else child_store(*rest)))
        return
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    rows = []
    for n in a.lengths:
        video = out / f"synthetic_1080p_{n}.mp4"
        print(f"generating {video} ..." if not video.exists() else f"using {video}", flush=True)
        make_video(video, n)
        work = out / f"work_{n}"
        plain = run_child("raw", str(video), "plain")
        tuned = run_child("raw", str(video), "tuned")
        subprocess.run(["rm", "-rf", str(work), f"{work}_reads"])
        st = run_child("store", str(video), str(work), str(a.warm_frames))
        subprocess.run(["rm", "-rf", str(work), f"{work}_reads"])
        rows.append((n, st))
        m = st["warm_frames"]
        print(f"{n:>6} frames: first model-ready frame {st['first_model_frame_s']:.3f} s"
              f" (after {st['imports_s']:.1f} s of imports: torch, zarr, av) | peak RSS {st['peak_rss_mib']:.0f} MiB"
              f" (torch, zarr, av imported: {st['libs_rss_mib']:.0f} MiB)\n"
              f"        raw PyAV: to_ndarray {plain['fps']:.0f} fps, tuned (samtrack's conversion, no cache) {tuned['fps']:.0f} fps\n"
              f"        iter_frames, cold: {st['cold_fps']:.0f} fps -> ratio {st['cold_fps'] / plain['fps']:.2f} to to_ndarray, "
              f"{st['cold_fps'] / tuned['fps']:.2f} to tuned; {st['persisted_frames']} frames persisted on the way\n"
              f"        read(i) in order, cold, first {m}: {st['read_fps']:.0f} fps (every chunk persisted) -> ratio "
              f"{st['read_fps'] / plain['fps']:.2f} / {st['read_fps'] / tuned['fps']:.2f}\n"
              f"        iter_frames over those {m} cached frames: {st['warm_fps']:.0f} fps -> ratio "
              f"{st['warm_fps'] / plain['fps']:.2f} / {st['warm_fps'] / tuned['fps']:.2f}", flush=True)
    if len(rows) >= 2:
        a_rss, b_rss = rows[0][1]["peak_rss_mib"], rows[-1][1]["peak_rss_mib"]
        print(f"peak RSS {rows[0][0]} -> {rows[-1][0]} frames: {a_rss:.0f} -> {b_rss:.0f} MiB ({(b_rss / a_rss - 1) * 100:+.1f} %)")
    print("targets: first frame < 0.5 s; peak RSS < 1024 MiB and within 10 % across lengths; ratio >= 0.8")


if __name__ == "__main__":
    main()
