"""Image features stored once per video, model, checkpoint and size: tracking from stored features
equals tracking from fresh ones (exactly: stored in the encoder's own dtype), and a correction in a
reopened job runs the image encoder on no frame whose features are stored (encoder calls counted)."""
from __future__ import annotations

import numpy as np
import pytest

import samtrack
from samtrack.io.feature_store import FeatureStore
from samtrack.session import SessionConfig
from tests import media
from tests import model_utils as mu

N = 16


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feat")
    return mu.make_checkpoint(tmp / "ck.pt", image_size=128), media.write_video(tmp / "v.mp4", N, w=128, h=96)


def _open(assets, wd, **cfg):
    ck, vid = assets
    return samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=wd,
                                 config=SessionConfig(**cfg) if cfg else None)


def _track(s) -> dict:
    s.add_points(0, 1, [[40, 50]], [1])
    s.add_box(N - 1, 2, [60, 30, 110, 80])
    return {(r.frame_idx, o): r.logits[i].copy() for r in s.propagate("both") for i, o in enumerate(r.obj_ids)}


def test_tracking_from_stored_features_equals_fresh_encoding(assets, tmp_path):
    with _open(assets, tmp_path / "fresh", feature_store=False) as s:
        fresh = _track(s)
        assert s.features is None and s.backend.calls["encode_image"].total() >= N  # RAM keeps 8: some twice
    with _open(assets, tmp_path / "stored") as s:
        assert s.precompute_features() == N and s.features.cached_frames == N
        s.backend.calls["encode_image"].clear()
        import threading

        get, readers = s.features.get, []

        def get_and_note(f):
            readers.append(threading.current_thread().name)
            return get(f)

        s.features.get = get_and_note
        stored = _track(s)
        assert s.backend.calls["encode_image"].total() == 0  # every frame read back from the store
        # read ahead on the prefetch thread while the frame before computes, not on the tracking thread
        ahead = sum(name.startswith("samtrack-input") for name in readers)
        assert ahead >= N - 4, readers
    assert fresh.keys() == stored.keys()
    for k in fresh:  # float32 on the CPU, stored as float32: the same logits, bit for bit
        np.testing.assert_array_equal(stored[k], fresh[k], err_msg=str(k))


def test_stored_features_have_the_layout_of_fresh_ones(assets, tmp_path):
    """The memory layout of what a step reads (FPN levels: some channels-last as the encoder gives them;
    position encodings) is the same for a frame read from the store as for a fresh encoding, for the first
    frame a process encodes too. Layouts change the rounding of vectorized CPU kernels (AVX-512): with C-order
    levels read back, or the permuted position encodings upstream's sine encoding returns the first time it
    sees a shape, the bit-for-bit test above failed on an AVX-512 machine."""
    import torch

    with _open(assets, tmp_path / "w") as s:
        s.backend.model.image_encoder.neck.position_encoding.cache.clear()  # as in a new process
        first = s.backend.encode_image(s._model_input(2), 2)  # the process's first encoding of this shape
        s.precompute_features()
        s._features.clear()
        stored = s._frame_features(3)
        fresh = s.backend.encode_image(s._model_input(3), 3)
        for key in ("backbone_fpn", "vision_pos_enc"):
            for i, (a, b, c) in enumerate(zip(stored.data[key], fresh.data[key], first.data[key])):
                assert torch.equal(a, b), (key, i)
                for x in (a, c):  # strides of size-1 dimensions do not matter
                    assert [st for st, n in zip(x.stride(), x.shape) if n > 1] == \
                        [st for st, n in zip(b.stride(), b.shape) if n > 1], (key, i, x.stride(), b.stride())
        assert not all(t.is_contiguous() for t in fresh.data["backbone_fpn"])  # the layouts checked are not all C


def test_rows_come_back_in_the_layout_they_were_put_in(tmp_path):
    from samtrack.io.feature_store import memory_order, with_memory_order

    rng = np.random.default_rng(0)
    cl = np.ascontiguousarray(rng.random((5, 4, 64), np.float32)).transpose(2, 0, 1)  # (C, H, W) channels-last
    c = rng.random((3, 8), np.float32)
    assert memory_order(cl) == [1, 2, 0] and memory_order(c) == [0, 1]
    back = with_memory_order(np.ascontiguousarray(cl), [1, 2, 0])
    assert back.strides == cl.strides and np.array_equal(back, cl)

    def check(rows):
        assert rows["cl"].strides == cl.strides and rows["c"].strides == c.strides
        assert np.array_equal(rows["cl"], cl) and np.array_equal(rows["c"], c)

    fs = FeatureStore(tmp_path / "f.zarr", 64, signature={"source": 1}, background=False)
    fs.put(0, {"cl": cl, "c": c})
    check(fs.get(0))  # still queued in memory
    fs.flush()
    check(fs.get(0))  # from disk
    fs.close()
    check(FeatureStore(tmp_path / "f.zarr", 64, signature={"source": 1}).get(0))  # reopened


def test_a_correction_in_a_reopened_job_encodes_no_stored_frame(assets, tmp_path):
    with _open(assets, tmp_path / "w") as s:
        s.add_points(0, 1, [[40, 50]], [1])
        list(s.propagate("forward"))
    with _open(assets, tmp_path / "w") as s:  # a new session: RAM caches are empty
        s.add_points(9, 1, [[80, 40]], [1])  # prompting a revisited frame: no encoder either
        list(s.propagate("both"))
        assert s.backend.calls["track"].total() > 0
        assert s.backend.calls["encode_image"].total() == 0


def test_a_disk_budget_evicts_least_recently_used_shards(assets, tmp_path, monkeypatch):
    import samtrack.io.feature_store as fsm

    monkeypatch.setattr(fsm, "SHARD_BYTES", 600_000)  # 2 frames of 128 px features per shard
    with _open(assets, tmp_path / "w", feature_disk_budget_bytes=1) as s:
        s.precompute_features()
        assert s.features._shard_frames == 2
        assert s.features.stats["evicted_shards"] > 0 and s.features.cached_frames < N
        cached = s.features.cached_frames
        s.add_points(0, 1, [[40, 50]], [1])
        r = list(s.propagate("forward"))
        assert len(r) == N and cached <= N


def test_a_store_of_another_job_is_rebuilt_not_served(tmp_path):
    rows = {"a": np.arange(12, dtype=np.float32).reshape(3, 4)}
    fs = FeatureStore(tmp_path / "f.zarr", 4, signature={"source": 1})
    fs.put(0, rows)
    fs.flush()
    assert 0 in FeatureStore(tmp_path / "f.zarr", 4, signature={"source": 1})
    other = FeatureStore(tmp_path / "f.zarr", 4, signature={"source": 2})
    assert 0 not in other and other.get(0) is None


def test_cli_cache_features_then_track_encodes_nothing(assets, tmp_path):
    import json
    import subprocess
    import sys

    ck, vid = assets
    job = tmp_path / "job"
    r = subprocess.run([sys.executable, "-m", "samtrack.cli", "cache", str(vid), "--features", "--workdir", str(job),
                        "--checkpoint", str(ck), "--image-size", "128", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{N} of {N} frames' features" in " ".join(r.stderr.split())
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, "points": [[40, 50]]}]}]}))
    from samtrack.job import start_track

    s, _ = start_track(vid, p, job, checkpoint=ck, image_size=128, device="cpu")
    try:
        list(s.propagate("both"))
        assert s.backend.calls["encode_image"].total() == 0 and s.backend.calls["track"].total() == N - 1
    finally:
        s.close()


def _rows(f: int) -> dict:
    return {"a": np.full((3, 4), f, np.float32), "b": np.arange(6, dtype=np.int16) + f}


class _BlockedWrites:
    """FrameArray.write_rows held until ``release`` (or failing once with ``fail``)."""

    def __init__(self, monkeypatch, fail: BaseException | None = None):
        import threading

        from samtrack.io.zarr_arrays import FrameArray

        self.go, self.started, self.fail, self.calls = threading.Event(), threading.Event(), fail, 0
        real = FrameArray.write_rows

        def write_rows(arr, rows):
            self.calls += 1
            self.started.set()
            assert self.go.wait(120), "the test never released the writer"
            if self.fail is not None:
                err, self.fail = self.fail, None
                raise err
            return real(arr, rows)

        monkeypatch.setattr(FrameArray, "write_rows", write_rows)


def test_rows_being_written_stay_readable_and_the_loop_does_not_wait_for_the_writer(tmp_path, monkeypatch):
    import samtrack.io.feature_store as fsm

    monkeypatch.setattr(fsm, "SHARD_BYTES", 1)  # one frame per shard: every put hands a shard to the writer
    blocked = _BlockedWrites(monkeypatch)
    fs = FeatureStore(tmp_path / "f.zarr", 4, signature={"source": 1})
    fs.put(0, _rows(0))  # returns while the writer is stuck on it
    assert blocked.started.wait(120)
    assert 0 in fs and fs.cached_frames == 1
    np.testing.assert_array_equal(fs.get(0)["a"], _rows(0)["a"])  # from memory, not the disk
    blocked.go.set()
    fs.flush()
    reopened = FeatureStore(tmp_path / "f.zarr", 4, signature={"source": 1})
    got = reopened.get(0)
    np.testing.assert_array_equal(got["a"], _rows(0)["a"])
    np.testing.assert_array_equal(got["b"], _rows(0)["b"])
    assert 1 not in reopened
    fs.close()
    assert fs._pool is None  # the writer thread is stopped


def test_put_waits_when_the_writer_is_behind(tmp_path, monkeypatch):
    """At most MAX_SHARDS_IN_FLIGHT shards wait for the writer: a put past that blocks (memory stays
    bounded) until a write finishes, then everything reaches the disk."""
    import threading

    import samtrack.io.feature_store as fsm

    monkeypatch.setattr(fsm, "SHARD_BYTES", 1)
    monkeypatch.setattr(fsm, "MAX_SHARDS_IN_FLIGHT", 1)
    blocked = _BlockedWrites(monkeypatch)
    fs = FeatureStore(tmp_path / "f.zarr", 3, signature={"source": 1})
    fs.put(0, _rows(0))
    second = threading.Thread(target=fs.put, args=(1, _rows(1)))
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive(), "a second shard was queued while the first was still being written"
    blocked.go.set()
    second.join(120)
    assert not second.is_alive()
    fs.put(2, _rows(2))
    fs.close()
    reopened = FeatureStore(tmp_path / "f.zarr", 3, signature={"source": 1})
    assert [reopened.get(f)["a"][0, 0] for f in range(3)] == [0, 1, 2]


def test_a_write_that_fails_on_the_writer_thread_is_raised_by_the_next_flush(tmp_path, monkeypatch):
    """The failure is not lost on the writer thread: flush raises it; the frames it was writing read as
    absent (encoded again when needed), and the store keeps working."""
    import samtrack.io.feature_store as fsm

    monkeypatch.setattr(fsm, "SHARD_BYTES", 1)
    blocked = _BlockedWrites(monkeypatch, fail=OSError(28, "No space left on device (test)"))
    fs = FeatureStore(tmp_path / "f.zarr", 4, signature={"source": 1})
    fs.put(0, _rows(0))
    blocked.go.set()
    from samtrack.errors import CacheError

    with pytest.raises(CacheError, match="No space left.*free disk space") as e:
        fs.flush()
    assert isinstance(e.value.__cause__, OSError)
    assert 0 not in fs and fs.get(0) is None
    fs.put(1, _rows(1))
    fs.flush()  # raised once: the next write goes through
    assert 1 in fs and fs.get(1)["a"][0, 0] == 1
    fs.close()


def test_while_tracking_a_writer_that_is_behind_costs_cached_frames_not_time(tmp_path, monkeypatch):
    """``drop_when_behind`` (a session's store): a put while MAX_SHARDS_IN_FLIGHT shards wait for the
    writer returns at once and the frame is not cached (counted), instead of holding tracking up."""
    import samtrack.io.feature_store as fsm

    monkeypatch.setattr(fsm, "SHARD_BYTES", 1)
    monkeypatch.setattr(fsm, "MAX_SHARDS_IN_FLIGHT", 1)
    blocked = _BlockedWrites(monkeypatch)
    fs = FeatureStore(tmp_path / "f.zarr", 3, signature={"source": 1}, drop_when_behind=True)
    fs.put(0, _rows(0))
    fs.put(1, _rows(1))  # the writer is still on frame 0: dropped (a blocking put would hang here)
    assert fs.stats["dropped_frames"] == 1 and 1 not in fs and 0 in fs
    blocked.go.set()
    fs.flush()
    fs.put(2, _rows(2))
    fs.close()
    reopened = FeatureStore(tmp_path / "f.zarr", 3, signature={"source": 1})
    assert 0 in reopened and 1 not in reopened and 2 in reopened
    assert blocked.calls == 4  # frames 0 and 2, two arrays each: frame 1 was never written


def test_closing_keeps_queued_rows_even_when_the_writer_is_behind(tmp_path, monkeypatch):
    import threading

    import samtrack.io.feature_store as fsm

    monkeypatch.setattr(fsm, "SHARD_BYTES", 120)  # two 60-byte frames per shard
    monkeypatch.setattr(fsm, "MAX_SHARDS_IN_FLIGHT", 1)
    blocked = _BlockedWrites(monkeypatch)
    fs = FeatureStore(tmp_path / "f.zarr", 5, signature={"source": 1}, drop_when_behind=True)
    fs.put(0, _rows(0))
    fs.put(1, _rows(1))  # shard 0 complete: handed to the writer
    assert fs._shard_frames == 2
    fs.put(4, _rows(4))  # shard 2 (frame 4 alone) is complete: dropped, the writer is on shard 0
    fs.put(2, _rows(2))  # shard 1 is not complete: queued
    assert fs.stats["dropped_frames"] == 1
    threading.Timer(0.2, blocked.go.set).start()
    fs.close()  # waits for the writer, then writes frame 2: closing drops nothing
    reopened = FeatureStore(tmp_path / "f.zarr", 5, signature={"source": 1})
    assert [f in reopened for f in range(5)] == [True, True, True, False, False]


@pytest.fixture
def ctrl_c():
    """Python's Ctrl-C handler for SIGINT during the test, also where this process inherited SIGINT
    ignored (started with `&` or nohup from a script: a CI run failed so), restored after."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_while_a_put_waits_for_the_writer_is_raised_and_loses_no_queued_write(tmp_path, monkeypatch, ctrl_c):
    """An interrupt while ``put`` waits for room is raised at once (not kept as a write failure for a
    later call); the write being waited for stays queued, so the next flush still waits for it."""
    import signal
    import threading

    import samtrack.io.feature_store as fsm

    monkeypatch.setattr(fsm, "SHARD_BYTES", 1)
    monkeypatch.setattr(fsm, "MAX_SHARDS_IN_FLIGHT", 1)
    blocked = _BlockedWrites(monkeypatch)
    fs = FeatureStore(tmp_path / "f.zarr", 3, signature={"source": 1})
    fs.put(0, _rows(0))
    assert blocked.started.wait(120)
    # to the main thread, which waits in put (a signal to the process may reach another thread)
    timer = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            fs.put(1, _rows(1))  # waits for the writer (stuck on frame 0) until the interrupt
    finally:  # if put did not wait (a regression), no interrupt may reach a later test
        timer.cancel()
        timer.join()
    assert len(fs._in_flight) == 1 and 1 not in fs  # frame 0's write is still awaited; frame 1 was not queued
    blocked.go.set()
    fs.put(2, _rows(2))  # no stale interrupt
    fs.close()
    reopened = FeatureStore(tmp_path / "f.zarr", 3, signature={"source": 1})
    assert 0 in reopened and 1 not in reopened and 2 in reopened
