"""Sequential reading: iter_frames streaming, the writer thread, and what decoding reuses across frames."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from samtrack.errors import CacheError
from samtrack.io import open_video
from samtrack.io.frame_store import DONE, FrameStore
from tests import media


def _slow_persist(monkeypatch, delay: float = 0.0, calls: list | None = None, *, gate: threading.Event | None = None,
                  until_queued: int = 0):
    """Make the writer slow by construction, not by timing: each write waits for ``gate`` (when
    given) and, for the first write, until ``until_queued`` more chunks wait in the queue; ``delay``
    only paces it. Waits have generous timeouts (hang guards only)."""
    real = FrameStore._persist
    first = threading.Event()

    def slow(self, k, block, state):
        if gate is not None:
            assert gate.wait(timeout=300), "the test never opened the gate"
        if until_queued and not first.is_set():
            first.set()
            with self._lock:
                self._lock.wait_for(lambda: len(self._write_queue) >= until_queued or self._stopping, timeout=300)
        if calls is not None:
            calls.append((k, len(self._write_queue)))
        if delay:
            time.sleep(delay)
        return real(self, k, block, state)

    monkeypatch.setattr(FrameStore, "_persist", slow)


def _wait_writer_idle(fs) -> None:
    """Until the writer has nothing queued or in hand (the consumer is then slower than the disk)."""
    with fs._lock:
        assert fs._lock.wait_for(lambda: not fs._write_queue and fs._writing is None, timeout=300)


def test_iter_frames_forward_reverse_and_ranges(videos, tmp_path):
    with open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=8) as fs:
        got = [(i, media.read_index(f)) for i, f in fs.iter_frames()]
        assert got == [(i, i) for i in range(120)]
        back = [(i, media.read_index(f)) for i, f in fs.iter_frames(5, 37, reverse=True)]
        assert back == [(i, i) for i in range(36, 4, -1)]
        assert list(fs.iter_frames(50, 50)) == []
        for i, f in fs.iter_frames(100, 104):
            np.testing.assert_array_equal(f, fs.read_raw(i))


def test_slow_consumer_gets_every_chunk_persisted(videos, tmp_path):
    with open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=8) as fs:
        for i, f in fs.iter_frames():
            if i % fs.chunk_frames == fs.chunk_frames - 1:
                _wait_writer_idle(fs)  # slower than the disk path by construction: nothing needs dropping
        fs.flush()
        assert fs.stats["unpersisted_chunks"] == 0
        assert fs.complete
    with open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=8) as fs2:
        assert fs2.complete
        assert [media.read_index(f) for _, f in fs2.iter_frames(0, 120, reverse=True)] == list(range(119, -1, -1))
        assert fs2.stats["streamed_chunks"] == 0 and fs2.stats["decoded_chunks"] == 0  # all from the cache


def test_fast_consumer_is_not_held_back_by_a_slow_disk(videos, tmp_path, monkeypatch):
    gate = threading.Event()  # the disk takes nothing until the consumer has read every frame
    _slow_persist(monkeypatch, gate=gate)
    with open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=8) as fs:
        assert [media.read_index(f) for _, f in fs.iter_frames()] == list(range(120))
        assert fs.stats["unpersisted_chunks"] > 0  # left unpersisted instead of waiting for the disk
        gate.set()
        fs.flush()
        assert not fs.complete
        assert fs.stats["decoded_chunks"] < 15  # the stream did not wait for each of its 15 chunks to be written
        assert [media.read_index(f) for _, f in fs.iter_frames()] == list(range(120))  # decoded again, right frames
        fs.build()
        assert fs.complete


def test_builder_overlaps_decoding_with_writing_and_bounds_the_queue(videos, tmp_path, monkeypatch):
    calls: list = []
    _slow_persist(monkeypatch, 0.0, calls, until_queued=1)
    with open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=8) as fs:
        for i in range(120):
            assert media.read_index(fs.read(i)) == i
        fs.flush()
        assert fs.complete  # the builder's chunks are never dropped
        assert sorted(k for k, _ in calls) == list(range(15))
        queued = max(q for _, q in calls)
        assert queued >= 1  # the builder decoded ahead while a chunk was being written
        assert queued <= fs.write_queue_chunks  # and waited for room instead of piling up


def test_close_during_build_keeps_what_was_written(videos, tmp_path, monkeypatch):
    _slow_persist(monkeypatch, 0.05)
    fs = open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=4)
    errors: list = []

    def build():
        try:
            fs.build()
        except Exception as e:  # noqa: BLE001  (asserted below)
            errors.append(e)

    t = threading.Thread(target=build, daemon=True)
    t.start()
    with fs._lock:  # a hang guard only: wait for the first chunk on disk, however slow the machine
        assert fs._lock.wait_for(lambda: (fs._state == DONE).any(), timeout=300)
    fs.close()
    t.join(timeout=10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], CacheError) and "resume" in str(errors[0])
    done = int((fs._state == DONE).sum())
    assert 0 < done < fs.n_chunks
    with open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=4) as fs2:
        assert int((fs2._state == DONE).sum()) == done  # every chunk marked done was written whole
        assert [media.read_index(fs2.read(i)) for i in (0, 50, 119)] == [0, 50, 119]


def test_write_failure_is_an_error_not_a_hang(videos, tmp_path, monkeypatch):
    def broken(self, k, block, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FrameStore, "_persist", broken)
    with open_video(videos["long_gop"], workdir=tmp_path, chunk_frames=8) as fs:
        with pytest.raises(CacheError, match="No space left"):
            for i in range(120):
                fs.read(i)
        with pytest.raises(CacheError, match="No space left"):
            fs.build()


def test_reused_reformatter_matches_fresh_conversion(videos):
    import av
    from av.video.reformatter import VideoReformatter

    from samtrack.io.readers.video_pyav import frame_to_rgb

    ref = VideoReformatter()  # one context across videos of different size, format and range
    for key in ("cfr", "odd", "10bit", "avi"):
        with av.open(str(videos[key])) as c:
            for n, f in enumerate(c.decode(video=0)):
                np.testing.assert_array_equal(frame_to_rgb(f, ref), frame_to_rgb(f))
                if n == 3:
                    break


def test_allocator_tuning_is_once_per_process_and_can_be_switched_off():
    code = "from samtrack.io.readers._alloc import keep_large_buffers as k; print(k(), k())"
    env = {**os.environ}
    env.pop("SAMTRACK_MALLOC_TUNING", None)
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "SAMTRACK_MALLOC_TUNING": "0"})
    expected = "True False" if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") else None
    if expected:
        assert on.stdout.strip() == expected
    assert off.stdout.strip() == "False False"


def test_empty_chunks_are_written_so_black_frames_are_cached(tmp_path):
    import zarr

    from samtrack.io.zarr_arrays import written_whole

    g = zarr.open_group(tmp_path / "z.zarr", mode="w")
    a = g.create_array("a", shape=(2, 8, 8), chunks=(1, 8, 8), dtype="uint8", fill_value=0)
    written_whole(a)[0] = np.zeros((8, 8), np.uint8)
    a[1] = np.zeros((8, 8), np.uint8)  # zarr's default skips a chunk equal to the fill value
    assert (tmp_path / "z.zarr" / "a" / "c" / "0" / "0" / "0").exists()
    assert not (tmp_path / "z.zarr" / "a" / "c" / "1" / "0" / "0").exists()


def test_direct_shard_writes_and_reads_equal_zarr(videos, tmp_path):
    from samtrack.io.shards import ShardReader, ShardWriter

    with open_video(videos["odd"], workdir=tmp_path, chunk_frames=6) as fs:  # 20 frames: last shard holds 2
        fs.build()
        assert fs._direct is not None and fs._shard_writer is not None  # the cache's own layout is recognized
        for i in range(20):  # shards written directly read back through zarr as the reference decode
            np.testing.assert_array_equal(np.asarray(fs._frames[i]), fs.read_raw(i))
        for k in range(fs.n_chunks):
            n = fs._chunk_len(k)
            np.testing.assert_array_equal(fs._direct.read_chunk(k, n), np.asarray(fs._frames[k * 6:k * 6 + n]))
        for i in (0, 5, 6, 13, 19):
            np.testing.assert_array_equal(fs._direct.read_frame(i // 6, i % 6), np.asarray(fs._frames[i]))
            np.testing.assert_array_equal(fs.read(i), fs.read_raw(i))
        frames_dir = fs.path / "frames"
        shape = (fs.info.height, fs.info.width, 3)
        assert ShardReader.for_array(frames_dir, shape, 5) is None  # another layout: zarr reads it
        # a shard cut short does not parse: None, and the store falls back to zarr (which reports it)
        shard = fs._chunk_file(1)
        shard.write_bytes(shard.read_bytes()[:100])
        assert fs._direct.read_chunk(1, 6) is None
        assert fs._direct.read_frame(1, 2) is None
