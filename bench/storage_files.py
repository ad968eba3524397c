"""Files, bytes and write time of a job's stores: results.zarr (masks) and memory.zarr (logits).

Writes a job of N frames x K objects straight through ResultStore and MemoryBank
(no model): per object a disc that random-walks over 1080p frames, absent (an
empty mask) on about a fifth of the frames in runs; its 256x256 low-res logits
(a scaled distance to the disc, negative outside, so every value has a full mantissa
as in real logits) as ``mask_logits`` and, on every frame (the worst case), as ``mem_logits``.
A flush, as the session's flusher does it (memory first, then results), runs
every ``--flush-every`` frames, offset by ``--phase`` frames so that a flush is
not aligned to the 32-frame shards (as after a keyframe anywhere in a video).

Prints per array: files, apparent bytes and allocated bytes, per frame too;
then the write cost: ms per frame (all K objects) for masks and for the memory
bank, the queueing cost on the tracking thread, and ms to read one frame back
(mask at video size, memory entry) from a freshly opened store. ``--legacy``
first creates every object's arrays in the one-chunk-per-frame layout written
before shards, to measure that layout through the same code. No asserts.
Usage: python bench/storage_files.py [--frames 10000] [--objects 3] [--height 1080 --width 1920]
       [--logits 256] [--flush-every 32] [--phase 16] [--legacy] [--out DIR] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Blob:
    """A disc whose centre random-walks; absent (empty mask) for runs of frames."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, s: int):
        self.rng, self.h, self.w, self.s = rng, h, w, s
        self.r = int(rng.integers(min(h, w) // 12, min(h, w) // 5))
        self.y, self.x = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        self.absent = 0
        yy, xx = np.mgrid[-self.r:self.r + 1, -self.r:self.r + 1]
        self.stamp = yy**2 + xx**2 <= self.r**2
        # logits on a canvas twice the low-res size: cropped around the disc's position
        yy, xx = np.mgrid[-s:s, -s:s].astype(np.float32)
        r_low = self.r * s / max(h, w)
        self.field = ((r_low - np.sqrt(yy**2 + xx**2)) * 0.8).astype(np.float32)

    def step(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(mask (H, W) bool, logits (s, s) float32, present)."""
        self.y = float(np.clip(self.y + self.rng.normal(0, 6), self.r, self.h - self.r - 1))
        self.x = float(np.clip(self.x + self.rng.normal(0, 6), self.r, self.w - self.r - 1))
        if self.absent == 0 and self.rng.random() < 0.01:
            self.absent = int(self.rng.integers(10, 40))  # a run of empty frames
        present = self.absent == 0
        self.absent = max(0, self.absent - 1)
        mask = np.zeros((self.h, self.w), bool)
        s = self.s
        cy, cx = int(self.y * s / self.h), int(self.x * s / self.w)
        logits = np.ascontiguousarray(self.field[s - cy:2 * s - cy, s - cx:2 * s - cx])
        if present:
            y0, x0 = int(self.y) - self.r, int(self.x) - self.r
            mask[y0:y0 + self.stamp.shape[0], x0:x0 + self.stamp.shape[1]] = self.stamp
        else:
            logits = logits - np.float32(40.0)  # no object: negative everywhere, still varying
        return mask, logits, present


def create_legacy(work: Path, n: int, h: int, w: int, s: int, objects: list[int]) -> None:
    """The one-chunk-per-frame arrays that ResultStore and MemoryBank created before shards."""
    import zarr

    res = zarr.open_group(work / "results.zarr", mode="a")
    mem = zarr.open_group(work / "memory.zarr", mode="a")
    v = (min(n, 4096),)
    for o in objects:
        g = res.create_group(f"obj_{o}")
        g.create_array("mask", shape=(n, h, w), chunks=(1, h, w), dtype="bool", fill_value=False)
        for k, dt, fill in (("status", "uint8", 0), ("object_score", "float32", np.nan), ("iou", "float32", np.nan),
                            ("source", "int32", -1)):
            g.create_array(k, shape=(n,), chunks=v, dtype=dt, fill_value=fill)
        g = mem.create_group(f"obj_{o}")
        for k, shape, chunks, dt in (("logits", (n, s, s), (1, s, s), "float32"),
                                     ("mem_logits", (n, s, s), (1, s, s), "float32"),
                                     ("ptr", (n, 256), (256, 256), "float32"), ("score", (n,), (4096,), "float32"),
                                     ("iou", (n,), (4096,), "float32"), ("flags", (n,), (4096,), "uint8")):
            g.create_array(k, shape=shape, chunks=chunks, dtype=dt, fill_value=0)


def disk_usage(array_dir: Path) -> tuple[int, int, int]:
    """(files, apparent bytes, allocated bytes) under one array's folder, metadata excluded."""
    files = size = alloc = 0
    for dirpath, _, names in os.walk(array_dir):
        for name in names:
            if name == "zarr.json":
                continue
            st = os.stat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
            alloc += st.st_blocks * 512
    return files, size, alloc


def run(a) -> None:
    import torch

    from samtrack.io.result_store import ResultStore, Status
    from samtrack.memory.bank import MemoryBank
    from samtrack.memory.entry import MemoryEntry

    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="samtrack-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    n, k, h, w, s = a.frames, a.objects, a.height, a.width, a.logits
    objects = list(range(1, k + 1))
    if a.legacy:
        create_legacy(work, n, h, w, s, objects)
    rs = ResultStore(work / "results.zarr", n_frames=n, height=h, width=w)
    bank = MemoryBank(work, n, device="cpu", host_budget_bytes=256 * 2**20)
    for o in objects:
        rs.add_object(o)
    rng = np.random.default_rng(0)
    blobs = {o: Blob(rng, h, w, s) for o in objects}
    t_queue = t_mem = t_res = 0.0
    empty = 0
    ptr = torch.zeros(256)

    def flush():
        nonlocal t_mem, t_res
        with rs.flush_lock, bank.flush_lock:  # flusher.flush_now's order, timed per store
            r_snap, b_snap = rs.snapshot(), bank.snapshot()
            t0 = time.perf_counter()
            bank.write_snapshot(b_snap)
            t1 = time.perf_counter()
            rs.write_snapshot(r_snap)
            t_mem += t1 - t0
            t_res += time.perf_counter() - t1

    t_all = time.perf_counter()
    for f in range(n):
        made = {o: blobs[o].step() for o in objects}
        t0 = time.perf_counter()
        for o, (mask, logits, present) in made.items():
            lg = torch.from_numpy(logits)[None]
            e = MemoryEntry(obj_ptr=ptr + f, object_score=torch.tensor([1.0 if present else -1.0]), mask_logits=lg,
                            iou=0.9, from_prompt=False, reverse=False,
                            mem_logits=torch.from_numpy(logits.copy())[None])
            bank.put(o, f, e)
            rs.write(f, o, mask, status=Status.PROPAGATED, object_score=1.0, iou=0.9, source=0)
            empty += not present
        t_queue += time.perf_counter() - t0
        if (f + 1 + a.phase) % a.flush_every == 0:
            flush()
    flush()
    t_all = time.perf_counter() - t_all
    rs.close()
    bank.close()
    report(work, a, n, k, empty, t_queue, t_mem, t_res, t_all)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"stores kept in {work}")


def read_times(work: Path, a, n: int) -> tuple[float, float]:
    from samtrack.io.result_store import ResultStore
    from samtrack.memory.bank import MemoryBank

    rs = ResultStore(work / "results.zarr", n_frames=n, height=a.height, width=a.width)
    bank = MemoryBank(work, n, device="cpu")
    frames = np.random.default_rng(1).integers(0, n, 200)
    t0 = time.perf_counter()
    for f in frames:
        rs.mask(int(f), 1)
    t1 = time.perf_counter()
    for f in frames:
        bank.get(1, int(f))
    t2 = time.perf_counter()
    return (t1 - t0) / len(frames) * 1e3, (t2 - t1) / len(frames) * 1e3


def report(work: Path, a, n: int, k: int, empty: int, t_queue: float, t_mem: float, t_res: float, t_all: float) -> None:
    mib = 2**20
    print(f"{n} frames x {k} objects, masks {a.height}x{a.width}, logits {a.logits}x{a.logits}, "
          f"{empty} empty object-frames ({empty / (n * k):.0%}), flush every {a.flush_every} frames "
          f"(phase {a.phase}){', legacy layout' if a.legacy else ''}")
    print(f"{'array':<28}{'files':>8}{'files/1k fr':>12}{'MiB':>10}{'alloc MiB':>11}{'bytes/frame':>13}")
    total_files = 0
    for store, names in (("results.zarr", ("mask", "status", "object_score", "iou", "source")),
                         ("memory.zarr", ("logits", "mem_logits", "ptr", "score", "iou", "flags"))):
        for name in names:
            files = size = alloc = 0
            for o in range(1, k + 1):
                fi, si, al = disk_usage(work / store / f"obj_{o}" / name)
                files, size, alloc = files + fi, size + si, alloc + al
            total_files += files
            print(f"{store + '/' + name:<28}{files / k:>8.0f}{files / k / n * 1000:>12.1f}{size / k / mib:>10.1f}"
                  f"{alloc / k / mib:>11.1f}{size / k / n:>13.0f}")
    all_files = sum(len(fs) for _, _, fs in os.walk(work))
    print(f"(per object; all objects: {total_files} data files, {all_files} files in all including metadata)")
    per = 1e3 / n
    print(f"write, ms per frame ({k} objects): masks {t_res * per:.2f}, memory (logits, mem_logits, ptr...) "
          f"{t_mem * per:.2f}; queueing on the tracking thread {t_queue * per:.2f}; "
          f"whole loop incl. making masks {t_all * per:.2f}")
    m_ms, e_ms = read_times(work, a, n)
    print(f"read from a reopened store, ms: one mask {m_ms:.2f}, one memory entry {e_ms:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--objects", type=int, default=3)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--logits", type=int, default=256, help="low-res logits side (image size / 4)")
    ap.add_argument("--flush-every", type=int, default=32)
    ap.add_argument("--phase", type=int, default=16, help="frames by which flushes miss the 32-frame shards")
    ap.add_argument("--legacy", action="store_true", help="write the one-chunk-per-frame layout")
    ap.add_argument("--out", help="work folder (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
