"""Stores that scale with hours of video: files per shard, empty masks, interrupted rewrites, old layout."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import samtrack.io.shards as shards_mod
from samtrack.io.result_store import ResultStore, Status
from samtrack.memory.bank import MemoryBank
from samtrack.memory.entry import MemoryEntry
from samtrack.session.flusher import flush_now

H, W, S = 48, 64, 16  # small masks and logits: the file count does not depend on their size
FRAMES_PER_FILE = 32  # the requirement: at most one file per 32 frames per array


def _mask(f: int, obj: int, h: int = H, w: int = W) -> np.ndarray:
    """A box that moves with the frame; empty on every 7th frame (the object is gone)."""
    m = np.zeros((h, w), bool)
    if (f + obj) % 7:
        y, x = (f * 3 + obj * 11) % (h - 8), (f * 5 + obj * 7) % (w - 8)
        m[y:y + 8, x:x + 8] = True
    return m


def _logits(f: int, obj: int, s: int = S) -> np.ndarray:
    return (np.arange(s * s, dtype=np.float32).reshape(s, s) * 0.01 - f - obj * 0.5).astype(np.float32)


def _entry(f: int, obj: int, s: int = S) -> MemoryEntry:
    lg = torch.from_numpy(_logits(f, obj, s))[None]
    return MemoryEntry(obj_ptr=torch.full((8,), float(f)), object_score=torch.tensor([1.0]), mask_logits=lg,
                       iou=0.5, from_prompt=False, reverse=False, mem_logits=lg + 1.0)


def _store(work: Path, n: int, objects=(1,), h: int = H, w: int = W):
    rs = ResultStore(work / "results.zarr", n_frames=n, height=h, width=w)
    for o in objects:
        rs.add_object(o)
    return rs, MemoryBank(work, n, device="cpu")


def _track(rs, bank, frames, objects=(1,)):
    for f in frames:  # as the session stores a frame: memory first, then results
        for o in objects:
            bank.put(o, f, _entry(f, o))
            rs.write(f, o, _mask(f, o), status=Status.PROPAGATED, object_score=1.0, iou=0.9, source=0)


def _data_files(array_dir: Path) -> list[Path]:
    return [p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json"]


def _check_on_disk(work: Path, n: int, frames, objects=(1,)) -> None:
    """Reopened stores hold exactly ``frames`` (mask and memory) for each object."""
    rs = ResultStore(work / "results.zarr", n_frames=n, height=H, width=W)
    bank = MemoryBank(work, n, device="cpu")
    for o in objects:
        assert np.flatnonzero(rs.status(o) == Status.PROPAGATED).tolist() == list(frames)
        for f in frames:
            np.testing.assert_array_equal(rs.mask(f, o), _mask(f, o), err_msg=f"frame {f}")
            e = bank.get(o, f)
            np.testing.assert_array_equal(e.mask_logits[0].numpy(), _logits(f, o))
            np.testing.assert_array_equal(e.mem_logits[0].numpy(), _logits(f, o) + 1.0)


def test_a_long_job_writes_at_most_one_file_per_32_frames_per_array(tmp_path):
    import zarr

    n, objects = 10_000, (1, 2, 3)
    rs, bank = _store(tmp_path, n, objects)
    for lo in range(0, n, 100):  # a flush every 100 frames: most flushes end inside a shard
        _track(rs, bank, range(lo, min(n, lo + 100)), objects)
        flush_now(rs, bank)
    rs.close()
    bank.close()
    bound = math.ceil(n / FRAMES_PER_FILE)
    arrays = [tmp_path / "results.zarr" / f"obj_{o}" / a for o in objects
              for a in ("mask", "status", "object_score", "iou", "source")]
    arrays += [tmp_path / "memory.zarr" / f"obj_{o}" / a for o in objects
               for a in ("logits", "mem_logits", "ptr", "score", "iou", "flags")]
    counts = {str(a.relative_to(tmp_path)): len(_data_files(a)) for a in arrays}
    assert max(counts.values()) <= bound, counts
    every = [p for d in ("results.zarr", "memory.zarr") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert len(every) <= len(arrays) * bound + 100  # (the rest is metadata)
    # what was written reads back, through samtrack and through zarr itself
    root = zarr.open_group(tmp_path / "results.zarr", mode="r")
    mem = zarr.open_group(tmp_path / "memory.zarr", mode="r")
    fresh = ResultStore(tmp_path / "results.zarr", n_frames=n, height=H, width=W)
    for f in (0, 6, 31, 32, 99, 100, 5003, n - 1):
        for o in objects:
            np.testing.assert_array_equal(fresh.mask(f, o), _mask(f, o))
            np.testing.assert_array_equal(np.asarray(root[f"obj_{o}/mask"][f]), _mask(f, o))
            np.testing.assert_array_equal(np.asarray(mem[f"obj_{o}/logits"][f]), _logits(f, o))
    assert (fresh.status(2) == Status.PROPAGATED).all()


def test_empty_masks_cost_almost_nothing_on_disk(tmp_path):
    n = 2_000
    rs = ResultStore(tmp_path / "results.zarr", n_frames=n, height=H, width=W)
    rs.add_object(1)
    empty = np.zeros((H, W), bool)
    for f in range(n):
        rs.write(f, 1, empty, status=Status.PROPAGATED, object_score=-5.0, iou=0.0, source=0)
        if f % 32 == 20:
            rs.flush()
    rs.flush()
    files = _data_files(tmp_path / "results.zarr" / "obj_1" / "mask")
    on_disk = sum(max(p.stat().st_size, p.stat().st_blocks * 512) for p in files)  # what the disk gives them
    assert on_disk / n < H * W / 10, f"{on_disk / n:.0f} bytes per empty {H}x{W} mask"
    fresh = ResultStore(tmp_path / "results.zarr", n_frames=n, height=H, width=W)
    for f in (0, 999, n - 1):
        m = fresh.mask(f, 1)
        assert m is not None and m.shape == (H, W) and not m.any()  # computed and empty, not "never run"


class _TornFile:
    """A file whose writes stop (raise) after ``limit`` bytes: a write interrupted midway."""

    def __init__(self, fh, limit: int):
        self._fh, self._left = fh, limit

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self._left:
            self._fh.write(data[:self._left])
            self._left = 0
            raise OSError(28, "No space left on device")
        self._left -= len(data)
        return self._fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.mark.parametrize("store", ["results.zarr", "memory.zarr"])
def test_an_interrupted_shard_rewrite_keeps_the_frames_already_in_it(tmp_path, monkeypatch, store):
    n = 64
    rs, bank = _store(tmp_path, n)
    _track(rs, bank, range(10))
    flush_now(rs, bank)  # frames 0-9 in shard 0
    _track(rs, bank, range(10, 20))

    def torn_open(path, mode="r", *a, **kw):
        fh = open(path, mode, *a, **kw)
        return _TornFile(fh, 300) if "w" in mode and store in str(path) else fh

    monkeypatch.setattr(shards_mod, "open", torn_open, raising=False)
    with pytest.raises(OSError, match="No space"):
        flush_now(rs, bank)  # rewriting shard 0 with frames 10-19 fails midway
    monkeypatch.undo()
    assert not [p for p in tmp_path.rglob("*.tmp")]  # the half-written file was removed
    _check_on_disk(tmp_path, n, range(10))  # frames 0-9 intact; 10-19 do not read as computed
    for f in range(20):  # nothing lost in memory either
        np.testing.assert_array_equal(rs.mask(f, 1), _mask(f, 1))
    flush_now(rs, bank)  # retried
    _check_on_disk(tmp_path, n, range(20))


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from pathlib import Path
    from samtrack.io.result_store import ResultStore, Status
    from samtrack.memory.bank import MemoryBank
    from samtrack.memory.entry import MemoryEntry
    from samtrack.session.flusher import flush_now
    sys.path.insert(0, sys.argv[2])
    from tests.test_storage import big_mask, big_logits

    work, n = Path(sys.argv[1]), 4000
    rs = ResultStore(work / "results.zarr", n_frames=n, height=256, width=256)
    rs.add_object(1)
    bank = MemoryBank(work, n, device="cpu", host_budget_bytes=2**24)
    start = int(np.argmax(rs.status(1) == Status.NOT_RUN))
    for f in range(start, n):
        lg = torch.from_numpy(big_logits(f))[None]
        bank.put(1, f, MemoryEntry(obj_ptr=torch.full((8,), float(f)), object_score=torch.tensor([1.0]),
                                   mask_logits=lg, iou=0.5, from_prompt=False, reverse=False))
        rs.write(f, 1, big_mask(f), status=Status.PROPAGATED, object_score=1.0, iou=0.9, source=0)
        if f % 7 == 6:  # a flush every 7 frames: every shard is rewritten several times
            flush_now(rs, bank)
            print(f, flush=True)
""")


def big_mask(f: int) -> np.ndarray:
    """(256, 256) noise, so that a shard of 32 is ~2 MB and the flush loop spends its time writing."""
    return np.random.default_rng(f).random((256, 256)) < 0.5


def big_logits(f: int) -> np.ndarray:
    return np.random.default_rng(10_000 + f).standard_normal((64, 64)).astype(np.float32)


def test_sigkill_during_a_flush_loop_loses_no_flushed_frame(tmp_path):
    root = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(0)
    flushed = -1
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(root)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=root)
        seen = []
        while len(seen) < 6:  # let it flush a few shards' worth, then kill it at a random moment
            line = proc.stdout.readline()
            assert line, f"the writer ended early: {proc.stderr.read()[-2000:]}"
            seen.append(int(line))
        time.sleep(float(rng.uniform(0, 0.3)))
        proc.kill()
        out, _ = proc.communicate()
        seen += [int(x) for x in out.split()]
        flushed = max(flushed, seen[-1])
        n = 4000
        rs = ResultStore(tmp_path / "results.zarr", n_frames=n, height=256, width=256)
        bank = MemoryBank(tmp_path, n, device="cpu")
        done = np.flatnonzero(rs.status(1) == Status.PROPAGATED)
        assert done.tolist() == list(range(len(done))) and len(done) > flushed, (round_, len(done), flushed)
        for f in done.tolist():  # every frame that reads as computed has its mask and its memory
            np.testing.assert_array_equal(rs.mask(f, 1), big_mask(f), err_msg=f"round {round_} frame {f}")
            np.testing.assert_array_equal(bank.get(1, f).mask_logits[0].numpy(), big_logits(f))


def _legacy_stores(work: Path, n: int) -> None:
    """Stores as ResultStore and MemoryBank wrote them before shards: one chunk per frame, written by zarr."""
    import zarr

    from samtrack.io.zarr_arrays import written_whole

    res = zarr.open_group(work / "results.zarr", mode="w")
    res.attrs.update({"video": {"n_frames": n, "height": H, "width": W},
                      "objects": {"1": {"name": "object-1", "parent": None, "color": None}}})
    g = res.create_group("obj_1")
    g.create_array("mask", shape=(n, H, W), chunks=(1, H, W), dtype="bool", fill_value=False)
    for k, dt, fill in (("status", "uint8", 0), ("object_score", "float32", np.nan), ("iou", "float32", np.nan),
                        ("source", "int32", -1)):
        g.create_array(k, shape=(n,), chunks=(min(n, 4096),), dtype=dt, fill_value=fill)
    mem = zarr.open_group(work / "memory.zarr", mode="w").create_group("obj_1")
    for key, shape, chunks, dt in (("logits", (n, S, S), (1, S, S), "float32"),
                                   ("mem_logits", (n, S, S), (1, S, S), "float32"),
                                   ("ptr", (n, 8), (256, 8), "float32"), ("score", (n,), (4096,), "float32"),
                                   ("iou", (n,), (4096,), "float32"), ("flags", (n,), (4096,), "uint8")):
        mem.create_array(key, shape=shape, chunks=chunks, dtype=dt, fill_value=0)
    for f in range(10):
        written_whole(g["mask"])[f] = _mask(f, 1)
        written_whole(mem["logits"])[f] = _logits(f, 1)
        written_whole(mem["mem_logits"])[f] = _logits(f, 1) + 1.0
        mem["ptr"][f] = np.full(8, float(f), np.float32)
    g["status"][:10] = Status.PROPAGATED
    mem["flags"][:10] = 1 | 16  # present, with mem_logits


def test_stores_in_the_one_chunk_per_frame_layout_still_read_and_write(tmp_path):
    n = 40
    _legacy_stores(tmp_path, n)
    _check_on_disk(tmp_path, n, range(10))
    rs, bank = _store(tmp_path, n)
    _track(rs, bank, range(10, 25))  # carries on in the layout it found
    flush_now(rs, bank)
    _check_on_disk(tmp_path, n, range(25))
    assert (tmp_path / "results.zarr" / "obj_1" / "mask" / "c" / "24" / "0" / "0").is_file()
    rs.add_object(2)  # a new object in an old store gets shards
    _track(rs, bank, range(3), objects=(2,))
    flush_now(rs, bank)
    assert len(_data_files(tmp_path / "results.zarr" / "obj_2" / "mask")) == 1
    _check_on_disk(tmp_path, n, range(3), objects=(2,))


@pytest.mark.parametrize("dtype,shape", [("bool", (48, 64)), ("float32", (16, 16))])
def test_direct_shard_updates_read_back_equal_through_zarr(tmp_path, dtype, shape):
    import zarr

    from samtrack.io.zarr_arrays import FrameArray, create_frame_array

    g = zarr.open_group(tmp_path / "z.zarr", mode="w")
    create_frame_array(g, "a", n_frames=70, frame_shape=shape, dtype=dtype)
    arr = FrameArray(g["a"], tmp_path / "z.zarr" / "a", skip_empty=True)
    assert arr.sharded and arr.frames_per_file == 32
    rng = np.random.default_rng(0)
    want = np.zeros((70, *shape), dtype)
    for lo, hi in ((0, 5), (5, 40), (30, 33), (60, 70), (3, 4)):  # overlapping, partial and past-the-end shards
        rows = {f: (rng.random(shape) < 0.3 if dtype == "bool" else rng.standard_normal(shape)).astype(dtype)
                for f in range(lo, hi)}
        rows[lo] = np.zeros(shape, dtype)  # an empty row among them
        arr.write_rows(rows)
        for f, v in rows.items():
            want[f] = v
    np.testing.assert_array_equal(np.asarray(zarr.open_group(tmp_path / "z.zarr", mode="r")["a"][:]), want)
    reader = arr._reader
    for f in range(70):
        row = reader.read_frame(f // 32, f % 32)  # the direct path, not zarr's
        assert row is not None and row.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(row, want[f])
