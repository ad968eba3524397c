"""Durability off the tracking thread: snapshots stay readable, order survives failures, errors surface."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import samtrack
import samtrack.io.result_store as result_store_mod
from samtrack.errors import CacheError
from samtrack.io.result_store import ResultStore, Status
from samtrack.memory.bank import MemoryBank, _DiskTier
from samtrack.memory.entry import MemoryEntry
from samtrack.session.flusher import Flusher, flush_now
from tests import media
from tests import model_utils as mu

N = 20


def _mask(f: int) -> np.ndarray:
    m = np.zeros((6, 8), bool)
    m[f % 6, : 1 + f % 8] = True
    return m


def _entry(f: int) -> MemoryEntry:
    return MemoryEntry(obj_ptr=torch.full((8,), float(f)), object_score=torch.tensor([float(f)]),
                       mask_logits=torch.full((1, 4, 4), float(f)), iou=0.5, from_prompt=False, reverse=False)


def _stores(tmp_path):
    rs = ResultStore(tmp_path / "results.zarr", n_frames=N, height=6, width=8)
    rs.add_object(1)
    return rs, MemoryBank(tmp_path, N, device="cpu")


def _track(rs, bank, frames):
    for f in frames:  # as the session stores a frame: memory first, then results
        bank.put(1, f, _entry(f))
        rs.write(f, 1, _mask(f), status=Status.PROPAGATED, object_score=1.0, iou=0.9, source=0)


def _on_disk(tmp_path) -> list[int]:
    fresh = ResultStore(tmp_path / "results.zarr", n_frames=N, height=6, width=8)
    st = fresh.status(1)
    for f in np.flatnonzero(st == Status.PROPAGATED):
        np.testing.assert_array_equal(fresh.mask(int(f), 1), _mask(int(f)))
    return [int(f) for f in np.flatnonzero(st == Status.PROPAGATED)]


def test_queued_results_stay_readable_while_a_flush_writes(tmp_path, monkeypatch):
    rs, bank = _stores(tmp_path)
    _track(rs, bank, range(10))
    entered, gate = threading.Event(), threading.Event()
    real = result_store_mod._bulk_write

    def held(arr, rows):
        entered.set()
        gate.wait(10)
        return real(arr, rows)

    monkeypatch.setattr(result_store_mod, "_bulk_write", held)
    t = threading.Thread(target=flush_now, args=(rs, bank))
    t.start()
    assert entered.wait(10)
    _track(rs, bank, [10, 11])  # tracking goes on while the flush is stuck in its first write
    for f in range(12):
        np.testing.assert_array_equal(rs.mask(f, 1), _mask(f))
        assert float(bank._disk.read(1, f).obj_ptr[0]) == f
    gate.set()
    t.join(10)
    assert _on_disk(tmp_path) == list(range(10))  # what the snapshot held; 10 and 11 wait for the next flush
    flush_now(rs, bank)
    assert _on_disk(tmp_path) == list(range(12))
    disk = _DiskTier(tmp_path / "memory.zarr", N)
    assert [float(disk.read(1, f).obj_ptr[0]) for f in range(12)] == list(range(12))


def test_results_are_not_written_before_their_memory(tmp_path, monkeypatch):
    rs, bank = _stores(tmp_path)
    _track(rs, bank, range(6))

    def full(snap):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_DiskTier, "write_snapshot", staticmethod(full))
    with pytest.raises(OSError):
        flush_now(rs, bank)
    assert _on_disk(tmp_path) == []  # memory failed, so no frame may read as computed
    assert all((rs.mask(f, 1) == _mask(f)).all() for f in range(6))  # nothing lost
    assert rs.dirty_frames == 6 and bank.dirty_frames == 6
    monkeypatch.undo()
    flush_now(rs, bank)
    assert _on_disk(tmp_path) == list(range(6))


def test_a_failed_background_flush_is_raised_to_the_caller_and_retried(tmp_path, monkeypatch):
    rs, bank = _stores(tmp_path)
    _track(rs, bank, range(4))
    calls = []

    def once(arr, rows, real=result_store_mod._bulk_write):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(arr, rows)

    monkeypatch.setattr(result_store_mod, "_bulk_write", once)
    fl = Flusher(rs, bank)
    fl.request()
    with pytest.raises(CacheError, match="No space left"):
        fl.wait()
    fl.request()
    fl.wait()
    fl.close()
    assert _on_disk(tmp_path) == list(range(4))


def test_propagation_writes_from_the_flusher_thread(tmp_path, monkeypatch):
    import samtrack.session.flusher as flusher_mod

    threads = []
    real = flusher_mod.flush_now

    def spy(results, bank):
        threads.append(threading.current_thread().name)
        return real(results, bank)

    monkeypatch.setattr(flusher_mod, "flush_now", spy)
    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=128)
    vid = media.write_video(tmp_path / "v.mp4", 40, w=128, h=96)
    with samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w") as s:
        s.add_points(0, 1, [[30, 40]], [1])
        list(s.propagate("forward"))
        assert "samtrack-session-flush" in threads  # flushed in the background during the pass
        assert (s.status(1)[1:] == Status.PROPAGATED).all()
    with samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w") as s2:
        assert (s2.status(1)[1:] == Status.PROPAGATED).all()  # and everything was durable at the end
