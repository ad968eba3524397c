"""A remote session (``samtrack serve`` on loopback) against a local one, side by side: the click -> mask round
trip, propagation frames/s, and what crosses the wire per frame.

Setting: the same generated video, checkpoint (random-init sam2.1 tiny at 256 px unless ``--checkpoint``),
prompts and torch thread count on both sides; the server is a subprocess on 127.0.0.1
(``tests/server_utils.ServerProcess``) and shares the machine's cores with this process, which waits on it.
Click latency: the median of ``--clicks`` clicks on an already encoded frame (the first click, which runs the
image encoder, is shown apart). Propagation: one forward pass over the whole video from fresh session
folders (the encoder runs on every frame, on both sides). Bytes: the propagation stream's body as read from
the socket (NDJSON, COCO RLE masks) divided by its frames, against the dense bool masks; a display frame
(PNG) as the viewer fetches it.

    python bench/remote.py [--frames 40] [--size 320x240] [--image-size 256] [--objects 2] [--clicks 9]
                           [--checkpoint PATH] [--threads N]

Prints figures, never asserts.
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from _common import assets, random_checkpoint


class CountingTransport(httpx.HTTPTransport):
    """Counts response body bytes per request path (what the socket delivered, before JSON decoding)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.bytes: collections.Counter = collections.Counter()

    def handle_request(self, request):
        resp = super().handle_request(request)
        inner, counter, key = resp.stream, self.bytes, request.url.path.rsplit("/", 1)[-1]

        class Counted(httpx.SyncByteStream):
            def __iter__(self):
                for chunk in inner:
                    counter[key] += len(chunk)
                    yield chunk

            def close(self):
                inner.close()

        resp.stream = Counted()
        return resp


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def clicks(w: int, h: int, n_obj: int):
    """Object k's first click: spread over the frame."""
    return [[[w * (k + 1) / (n_obj + 1), h / 2]] for k in range(n_obj)]


def prompt(s, a, w: int, h: int) -> float:
    """Every object clicked on frame 0; the seconds of the first click (it runs the image encoder)."""
    t0 = time.perf_counter()
    s.add_points(0, 1, clicks(w, h, a.objects)[0], [1])
    first = time.perf_counter() - t0
    for k in range(1, a.objects):
        s.add_points(0, k + 1, clicks(w, h, a.objects)[k], [1])
    return first


def click(s, i: int, a, w: int, h: int) -> float:
    """A refining click on object 1 (moving a little each time): seconds until its masks are here."""
    pt = [[w / (a.objects + 1) + (i % 5) - 2, h / 2 + 3], [w / (a.objects + 1) + 4, h / 2 - (i % 3)]]
    t0 = time.perf_counter()
    r = s.add_points(0, 1, pt, [1, 1])
    dt = time.perf_counter() - t0
    assert r.masks.shape[1:] == (h, w)
    return dt


def propagate(s) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = sum(1 for _ in s.propagate("forward"))
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--objects", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=9)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--repeat", type=int, default=2, help="runs; the best of each side is shown")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default torch's)")
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    try:  # a scheduling group of its own, as the server subprocess has (Linux autogroups: a session each), so
        os.setsid()  # neither side gets a larger share of a machine others load (measured: up to 10x apart)
    except OSError:
        pass  # already a session leader
    import torch

    import samtrack
    from tests.server_utils import ServerProcess

    w, h = (int(v) for v in a.size.split("x"))
    out = Path(a.out).resolve()
    ck, vid = assets(out, a.frames, a.image_size, w=w, h=h)
    ck = Path(a.checkpoint).resolve() if a.checkpoint else random_checkpoint(out, a.image_size)
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    roots = sorted({str(vid.parent), str(ck.parent)})
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {threads} threads "
          f"on both sides, CPU; server and client on loopback (127.0.0.1), sharing the cores")
    model = f"checkpoint {ck.name}" if a.checkpoint else "random-init sam2.1 tiny"
    print(f"video {vid.name}: {a.frames} frames {w}x{h}; {model} at image size {a.image_size}; {a.objects} "
          "objects, clicks on frame 0")
    print(f"{a.repeat} runs: first click and frames/s the best run's, click round trip the median of "
          f"{a.repeat * a.clicks} clicks (local and remote interleaved)")
    lo = {"first": [], "click": [], "fps": []}
    re = {"first": [], "click": [], "fps": []}
    floor = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        transport = CountingTransport()
        http = httpx.Client(transport=transport, timeout=httpx.Timeout(300.0, connect=10.0))
        with ServerProcess(roots=roots, workdir=tmp / "server", env=env) as srv, \
                samtrack.connect(srv.url, token=srv.token, http=http) as client:
            for rep in range(a.repeat):  # fresh folders each time: the encoder runs on every frame
                local = samtrack.open_session(vid, checkpoint=ck, image_size=a.image_size, device="cpu",
                                              workdir=tmp / f"local{rep}")
                remote = client.open_session(str(vid), checkpoint=str(ck), image_size=a.image_size,
                                             workdir=str(tmp / "server" / "sessions" / f"bench{rep}"))
                for side, s in ((lo, local), (re, remote)):
                    side["first"].append(prompt(s, a, w, h))
                transport.bytes.clear()
                for i in range(a.clicks):  # interleaved: load from elsewhere hits both sides alike
                    lo["click"].append(click(local, i, a, w, h))
                    re["click"].append(click(remote, i, a, w, h))
                prompt_bytes = transport.bytes["prompts"] / a.clicks
                transport.bytes.clear()
                for side, s in ((lo, local), (re, remote))[::1 if rep % 2 == 0 else -1]:  # alternate the order
                    n, dt = propagate(s)
                    side["fps"].append(n / dt)
                stream_bytes, frames = transport.bytes["propagate"], n
                transport.bytes.clear()
                png_lat = []
                for f in range(min(10, a.frames)):
                    t0 = time.perf_counter()
                    remote.frames.read(f)
                    png_lat.append(time.perf_counter() - t0)
                png_bytes = transport.bytes["image"] / len(png_lat)
                for _ in range(10):  # the transport's floor: a request that computes nothing
                    t0 = time.perf_counter()
                    client.server_info = client._http.json("GET", "/v1/server")
                    floor.append(time.perf_counter() - t0)
                local.close()
                remote.close()
        http.close()
    lo = {"first": min(lo["first"]), "click": statistics.median(lo["click"]), "fps": max(lo["fps"])}
    re = {"first": min(re["first"]), "click": statistics.median(re["click"]), "fps": max(re["fps"])}
    dense = a.objects * w * h  # bytes of (n, H, W) bool masks
    print(f"{'':34} {'local':>10} {'remote':>10} {'remote/local':>13}")
    for name, key, unit, scale in (("first click (encodes the frame)", "first", "ms", 1000),
                                   ("click -> mask round trip, median", "click", "ms", 1000),
                                   ("propagation", "fps", "frames/s", 1)):
        lv, rv = lo[key] * scale, re[key] * scale
        print(f"{name + ' (' + unit + ')':34} {lv:>10.1f} {rv:>10.1f} {rv / lv:>13.2f}")
    print(f"propagation stream: {stream_bytes / frames:.0f} B/frame on the wire ({a.objects} objects, {frames} "
          f"frames, {stream_bytes} B), dense bool masks {dense} B/frame ({dense / max(1, stream_bytes / frames):.0f}x "
          "more)")
    print(f"an empty request (GET /v1/server) round trip: {statistics.median(floor) * 1000:.1f} ms median (the "
          "transport's share of each remote call)")
    print(f"prompt answer: {prompt_bytes:.0f} B per click (the frame's masks for every object)")
    print(f"display frame (PNG {w}x{h}): {png_bytes / 1024:.1f} KiB, {statistics.median(png_lat) * 1000:.1f} ms "
          f"median fetch + decode")


if __name__ == "__main__":
    main()
