"""Frame store figures on a generated 1080p H.264 video of 1,000 and 10,000 frames.

Prints, for each length: time to the first model-ready frame (open + decode +
resize to 1024 + normalize), peak RSS of the process, and sequential read
throughput as a ratio to raw PyAV decoding (decode + RGB conversion) measured
in the same run. Each measurement runs in its own subprocess so that peak RSS
is its own. Usage: python bench/frame_store.py [--lengths 1000 10000] [--out bench_out]
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


def child_raw(path: str) -> dict:
    import av

    from samtrack.io.readers.video_pyav import frame_to_rgb

    t0 = time.perf_counter()
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for f in c.decode(s):
            frame_to_rgb(f)
            n += 1
    dt = time.perf_counter() - t0
    return {"frames": n, "seconds": dt, "fps": n / dt, "peak_rss_mib": _peak_rss_mib()}


def child_store(path: str, workdir: str, persist: str = "0") -> dict:
    import torch  # noqa: F401  (library imports are not part of the first-frame time)

    import samtrack
    import samtrack.io  # noqa: F401  (zarr, av)

    t0 = time.perf_counter()
    fs = samtrack.open_video(path, workdir=workdir)
    x = fs.model_input(0, 1024)
    first = time.perf_counter() - t0
    assert x.shape == (3, 1024, 1024)
    t1 = time.perf_counter()
    n = len(fs)
    for i, frame in fs.iter_frames():
        pass
    seq = time.perf_counter() - t1
    unpersisted = fs.stats["unpersisted_chunks"] * fs.chunk_frames
    fs.flush()
    tb = time.perf_counter()
    if persist == "1":
        fs.build()  # persist what streaming left out: the full-cache cost on this disk
    build_s = time.perf_counter() - tb
    t2 = time.perf_counter()
    for i in range(0, n, max(1, n // 500)):
        fs.read(i)
    k = len(range(0, n, max(1, n // 500)))
    cached = time.perf_counter() - t2
    fs.close()
    return {"first_model_frame_s": first, "frames": n, "seq_fps": n / seq, "cached_read_fps": k / cached,
            "unpersisted_frames": unpersisted, "build_rest_s": build_s,
            "peak_rss_mib": _peak_rss_mib()}


def run_child(*args: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--child", nargs="+")
    ap.add_argument("--persist", action="store_true", help="also time build() persisting every frame")
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
        raw = run_child("raw", str(video))
        work = out / f"work_{n}"
        subprocess.run(["rm", "-rf", str(work)])
        st = run_child("store", str(video), str(work), "1" if a.persist else "0")
        subprocess.run(["rm", "-rf", str(work)])
        rows.append((n, raw, st))
        print(f"{n:>6} frames: first model-ready frame {st['first_model_frame_s']:.3f} s | peak RSS {st['peak_rss_mib']:.0f} MiB"
              f" | sequential {st['seq_fps']:.1f} fps vs raw PyAV {raw['fps']:.1f} fps -> ratio {st['seq_fps'] / raw['fps']:.2f}"
              f" | cached random reads {st['cached_read_fps']:.0f} fps"
              f" | streaming left {st['unpersisted_frames']} frames unpersisted"
              + (f", build() then persisted them in {st['build_rest_s']:.1f} s" if a.persist else ""), flush=True)
    if len(rows) >= 2:
        a_rss, b_rss = rows[0][2]["peak_rss_mib"], rows[-1][2]["peak_rss_mib"]
        print(f"peak RSS {rows[0][0]} -> {rows[-1][0]} frames: {a_rss:.0f} -> {b_rss:.0f} MiB ({(b_rss / a_rss - 1) * 100:+.1f} %)")
    print("targets: first frame < 0.5 s; peak RSS < 1024 MiB and within 10 % across lengths; ratio >= 0.8")


if __name__ == "__main__":
    main()
