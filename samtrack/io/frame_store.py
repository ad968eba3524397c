"""FrameStore: a chunked zarr cache of display frames, filled lazily in the background.

Layout of ``<workdir>/frames.zarr`` (zarr v3):

- ``frames``: (N, H, W, 3) uint8 display pixels, one shard per ``chunk_frames``
  frames, one inner chunk per frame so a random read decompresses one frame.
  Threads: the builder decodes missing chunks (prefetch, ``build()``), a
  consumer of ``iter_frames`` decodes its own, and one writer thread writes
  every shard (a chunk is claimed by one decoder, so one writer per shard).
  Complete shards are read directly (``shards``), else through zarr;
- ``chunk_state``: (n_chunks,) uint8, one zarr chunk per element, written after
  its shard: 0 missing, 1 complete, 2 partial (a decode error inside);
- attributes: ``signature`` (what the cache was built from), ``mapping`` (the
  intensity window used), ``info``, ``errors`` (frame -> message).

Invariant: a frame is served from zarr only when its chunk's state says so; a
killed build leaves at worst a shard without its state, which is rebuilt.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from samtrack.errors import CacheError, CancelledError, DecodeError, FrameIndexError, InvalidOptionError, SamtrackError
from samtrack.io.frame_builder import Builder as _Builder
from samtrack.io.folder_lock import refuse_if_held_elsewhere
from samtrack.io.frame_writer import DONE, MISSING, PARTIAL, ChunkWriter
from samtrack.io.info import VideoInfo
from samtrack.io.cache_meta import default_cache_root, default_chunk_frames, source_signature  # noqa: F401
from samtrack.io.model_input import to_model_input
from samtrack.io.shards import ShardReader, ShardWriter
from samtrack.io.zarr_arrays import open_signed, written_whole
from samtrack.io.normalize import DisplayMapping, Intensity, resolve_mapping
from samtrack.io.readers.base import Reader

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class FrameStore(ChunkWriter):
    """Random access to display frames of any source, through a zarr cache.

    ``read(i)`` -> (H, W, 3) uint8 display pixels; ``read_raw(i)`` -> original
    samples (e.g. uint16) for export; ``model_input(i, S, device)`` -> float32
    (3, S, S) on ``device``. Frames are decoded once by a background thread that
    runs ``prefetch`` chunks ahead of the last read; ``build()`` fills everything.
    """

    def __init__(self, source: Any, reader: Reader, *, workdir: str | os.PathLike | None = None,
                 intensity: Intensity | None = None, chunk_frames: int | None = None,
                 prefetch_chunks: int = 4, ram_chunks: int = 2, disk_budget_bytes: int | None = 20 * 2**30):
        import zarr
        from zarr.codecs import BloscCodec

        self._zarr = zarr
        self.source = source
        self._reader = reader
        self.intensity = intensity or Intensity()
        info = reader.info
        self.chunk_frames = int(chunk_frames or default_chunk_frames(info.height, info.width))
        if self.chunk_frames < 1 or prefetch_chunks < 1:
            raise InvalidOptionError("chunk_frames and prefetch_chunks must be >= 1")
        self.n_chunks = -(-info.n_frames // self.chunk_frames)
        self.prefetch_chunks = prefetch_chunks
        self.disk_budget_bytes = disk_budget_bytes
        self._tmpdir = None
        if workdir is None:
            if isinstance(source, (str, os.PathLike)):
                key = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:16]
                workdir = default_cache_root() / "frames" / key
            else:
                self._tmpdir = tempfile.mkdtemp(prefix="samtrack-frames-")
                workdir = self._tmpdir
        self.workdir = Path(workdir)
        self.path = self.workdir / "frames.zarr"
        self._lock = threading.Condition()
        self._ram: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._ram_chunks = ram_chunks
        self._access: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._requested: list[int] = []
        self._cursor = 0
        self._last_read = -2  # the index read last, to recognize sequential reading
        self._build_all = False
        self._closed = False
        self._shut = False  # close() ran
        self._stopping = False  # close() has begun: no new decoding
        self._sizes: dict[int, int] | None = None  # chunk -> bytes on disk, for the disk budget
        self._fatal_error: BaseException | None = None
        self._errors: dict[int, str] = {}
        self._building: tuple[int, np.ndarray, int] | None = None  # (chunk, block, frames ready)
        self._raw_lock = threading.Lock()
        self._claimed: set[int] = set()  # chunks being written: one writer per chunk
        self._write_queue: collections.deque[tuple[int, Any, int, bool]] = collections.deque()  # (chunk, block, state, streamed)
        self.write_queue_chunks = 2
        self.stream_write_duty = 0.1  # share of time the writer may take while a consumer outruns it
        self._writer: threading.Thread | None = None
        self._writing: tuple[int, Any, int, bool] | None = None  # the queue entry the writer has in hand
        self._fg_reader: Reader | None = None
        self._open_cache(BloscCodec)
        self._builder: _Builder | None = None
        self.stats = {"decoded_chunks": 0, "evicted_chunks": 0, "streamed_chunks": 0, "unpersisted_chunks": 0}

    # -- cache files -----------------------------------------------------------
    def _open_cache(self, BloscCodec) -> None:
        zarr = self._zarr
        sig = self.signature = source_signature(self.source, self._reader, self.intensity)  # identity: io/identity.py
        if self.path.exists() and _signature_of(self.path) != sig:  # about to be rebuilt: not under a session
            refuse_if_held_elsewhere(self.workdir)                 # of another process (one writer per folder)
        root = open_signed(self.path, sig, "frame cache")
        info = self._reader.info
        if root is None:
            self.mapping = resolve_mapping(self._reader, self.intensity)
            self.workdir.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(self.path, mode="w")
            f = self.chunk_frames
            root.create_array("frames", shape=(info.n_frames, info.height, info.width, 3), dtype="uint8",
                              shards=(f, info.height, info.width, 3), chunks=(1, info.height, info.width, 3),
                              compressors=[BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")], fill_value=0)
            root.create_array("chunk_state", shape=(self.n_chunks,), dtype="uint8", chunks=(1,), fill_value=0)
            root.attrs.update({"mapping": self.mapping.to_dict(), "info": info.to_dict(),
                               "chunk_frames": f, "errors": {}, "complete": False, "signature": sig})
        else:
            self.mapping = DisplayMapping.from_dict(root.attrs["mapping"])
            self.chunk_frames = int(root.attrs["chunk_frames"])
            self.n_chunks = -(-info.n_frames // self.chunk_frames)
        self._root = root
        self._frames = written_whole(root["frames"])
        shape = (info.height, info.width, 3)
        self._direct = ShardReader.for_array(self.path / "frames", shape, self.chunk_frames)
        self._shard_writer = ShardWriter.for_array(self.path / "frames", shape, self.chunk_frames)
        self._state_arr = root["chunk_state"]
        self._state = self._load_states()
        self._state[self._state == PARTIAL] = MISSING  # retry damaged chunks once per open
        done = int((self._state == DONE).sum())
        if done:
            log.info("frame cache %s: resuming, %d of %d chunks already built", self.path, done, self.n_chunks)

    def _load_states(self) -> np.ndarray:
        """Chunk states from the files that exist (a fresh cache of 10,000 frames has none to read)."""
        state = np.zeros(self.n_chunks, np.uint8)
        d = self.path / "chunk_state" / "c"
        if d.is_dir():
            for name in os.listdir(d):
                if name.isdigit() and int(name) < self.n_chunks:
                    state[int(name)] = int(self._state_arr[int(name)])
        return state

    # -- public API ------------------------------------------------------------
    @property
    def info(self) -> VideoInfo:
        """The source's frame count, size (pixels), fps and dtype, as its reader reports them."""
        return self._reader.info

    def __len__(self) -> int:
        return self.info.n_frames

    @property
    def complete(self) -> bool:
        """True when every frame is decoded into the cache (:meth:`build` finished)."""
        return bool((self._state == DONE).all())

    @property
    def cached_frames(self) -> int:
        """Frames decoded into the cache so far (whole chunks only)."""
        return int(sum(self._chunk_len(k) for k in np.flatnonzero(self._state == DONE)))

    def read(self, index: int) -> np.ndarray:
        """Display frame ``index``: (H, W, 3) uint8 RGB after intensity mapping."""
        index = self._check(index)
        k = index // self.chunk_frames
        with self._lock:
            self._cursor = k
            self._touch(k)
            while True:
                if self._fatal_error is not None:
                    raise CacheError(f"frame decoding stopped: {self._fatal_error}") from self._fatal_error
                if index in self._errors:
                    raise DecodeError(self._errors[index], frame=index)
                b = self._building
                if b is not None and b[0] == k and index - k * self.chunk_frames < b[2]:
                    return b[1][index - k * self.chunk_frames].copy()
                chunk = self._in_memory(k)
                if chunk is not None:
                    self._last_read = index
                    if k in self._ram:
                        self._ram.move_to_end(k)
                    return chunk[index - k * self.chunk_frames]
                if self._state[k] == DONE and abs(index - self._last_read) == 1:
                    # sequential reading: one zarr call for the whole chunk, then frames from RAM
                    lo = k * self.chunk_frames
                    block = self._cached_chunk(k)
                    self._ram[k] = block
                    while len(self._ram) > self._ram_chunks:
                        self._ram.popitem(last=False)
                    self._last_read = index
                    return block[index - lo]
                if self._state[k] in (DONE, PARTIAL):
                    self._last_read = index
                    return self._cached_frame(index)
                if self._closed:
                    raise CacheError("the frame store is closed")
                if k not in self._requested:
                    self._requested.append(k)
                self._ensure_builder()
                self._lock.notify_all()
                self._lock.wait(timeout=1.0)

    __getitem__ = read

    def read_raw(self, index: int) -> np.ndarray:
        """Original samples of frame ``index`` (H, W, C) in the source dtype, e.g. uint16."""
        index = self._check(index)
        with self._raw_lock:
            return self._reader.read_raw(index)

    def timestamps(self) -> np.ndarray | None:
        """(n_frames,) float64 seconds: presentation time of each frame from the stream's start.

        From the reader (a video's demux scan, exact on variable frame rate;
        ``i / fps`` for sources with a known rate); None when the source has no
        timing (an image folder opened without ``fps=``).
        """
        return self._reader.timestamps()

    def frame_names(self) -> list[str] | None:
        """One name per frame (an image folder's file names, in frame order); None for other sources."""
        return self._reader.frame_names()

    def model_input(self, index: int, spec, device="cpu"):
        """float32 tensor (3, S, S): frame ``index`` prepared by ``spec`` (an
        :class:`~samtrack.io.model_input.InputSpec`: the backend's size, mean and std; an int
        means SAM2's statistics at that size)."""
        return to_model_input(self.read(index), spec, device)

    def build(self, *, progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
        """Decode every frame into the cache (resumes a partial cache)."""
        total = len(self)
        with self._lock:
            self._build_all = True
            self._ensure_builder()
            self._lock.notify_all()
            while True:
                if self._fatal_error is not None:
                    raise CacheError(f"frame decoding stopped: {self._fatal_error}") from self._fatal_error
                finished = self._state != MISSING
                done = int(sum(self._chunk_len(k) for k in np.flatnonzero(finished)))
                if progress:
                    progress(done, total)
                if finished.all():
                    break
                if self._stopping:
                    raise CacheError(f"the frame store was closed during build() at {done}/{total} frames; "
                                     "open it again to resume")
                if cancel is not None and cancel.is_set():
                    self._build_all = False
                    raise CancelledError(f"cache build cancelled at {done}/{total} frames; run it again to resume")
                self._lock.wait(timeout=0.2)
        if self._errors:
            frames = sorted(self._errors)
            raise DecodeError(f"{len(frames)} frame(s) could not be decoded, first {frames[0]}: "
                              f"{self._errors[frames[0]]}; the other {total - len(frames)} frames are cached",
                              frame=frames[0])

    def iter_frames(self, start: int = 0, stop: int | None = None, *, reverse: bool = False):
        """Yield ``(index, display_frame)`` for ``start <= index < stop``, in order or reversed.

        The fast path for sequential consumers (export, scans): cached chunks
        are read from disk; missing ones are decoded in the caller's thread, a
        whole chunk at a time, and handed to the writer thread that persists
        them behind the consumer. When the consumer outruns the writer, the
        oldest queued chunk is left unpersisted (decoded again if revisited) and
        the writer rests so that it takes at most ``stream_write_duty`` (10 %)
        of the time; a consumer slower than the writer gets everything
        persisted, and ``build()`` persists everything.
        """
        n = len(self)
        stop = n if stop is None else min(stop, n)
        if start >= stop:
            return
        self._check(start)
        first, last = start // self.chunk_frames, (stop - 1) // self.chunk_frames
        ks = range(last, first - 1, -1) if reverse else range(first, last + 1)
        for k in ks:
            block = self._chunk_for_stream(k)
            lo, hi = max(start, k * self.chunk_frames), min(stop, k * self.chunk_frames + len(block))
            idx = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
            for i in idx:
                if i in self._errors:
                    raise DecodeError(self._errors[i], frame=i)
                yield i, block[i - k * self.chunk_frames]

    def _chunk_for_stream(self, k: int) -> np.ndarray:
        """Chunk ``k`` from RAM, the write queue or zarr, else decoded here (no prefetch thread)."""
        with self._lock:
            self._touch(k)  # the prefetch cursor is left alone: streaming decodes itself
            while True:
                if self._fatal_error is not None:
                    raise CacheError(f"frame decoding stopped: {self._fatal_error}") from self._fatal_error
                chunk = self._in_memory(k)
                if chunk is not None:
                    return chunk
                if self._state[k] in (DONE, PARTIAL):
                    return self._cached_chunk(k)
                if self._claim(k):
                    break
                if self._closed:
                    raise CacheError("the frame store is closed")
                self._lock.wait(timeout=0.5)  # another thread has chunk k in hand: wait until it is published
        if self._fg_reader is None:
            self._fg_reader = self._reader.reopen()
        start, stop = k * self.chunk_frames, k * self.chunk_frames + self._chunk_len(k)
        block: list[np.ndarray] = []  # a list, not a stacked copy: the writer stacks it
        try:
            for raw in self._fg_reader.iter_raw(start, stop):
                block.append(self.mapping.apply(raw))
        except BaseException:
            with self._lock:
                self._claimed.discard(k)
            raise
        self._queue_write(k, block)
        return block

    def close(self, timeout: float = 600.0) -> None:
        """Stop decoding, write what is queued, release the files. Idempotent.

        The builder and writer threads are joined; one still running after ``timeout``
        seconds (a hung disk) raises :class:`CacheError` after the files are released, and
        a write that failed is raised too (what it did not write is rebuilt next time)."""
        if self._shut:
            return
        self._shut = True
        with self._lock:
            self._stopping = True  # the builder takes no new chunk; the one in hand is queued
            self._lock.notify_all()
        if self._builder is not None:
            self._builder.join(timeout=timeout)
        self.flush()
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=timeout)
        self._reader.close()
        if self._fg_reader is not None:
            self._fg_reader.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        alive = [t.name for t in (self._builder, self._writer) if t is not None and t.is_alive()]
        if alive:
            raise CacheError(f"the frame cache's {' and '.join(alive)} thread(s) still run after {timeout:.0f} s "
                             "(a slow or hung disk?); chunks they had not written are rebuilt next time")

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- builder side ----------------------------------------------------------
    def _check(self, index: int) -> int:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
            raise FrameIndexError(f"frame {index!r} is out of range: this video has {n} frames (0..{n - 1})")
        return int(index)

    def _chunk_len(self, k: int) -> int:
        return min(self.chunk_frames, len(self) - k * self.chunk_frames)

    def _touch(self, k: int) -> None:
        self._access[k] = time.monotonic()
        self._access.move_to_end(k)

    def _ensure_builder(self) -> None:
        if self._builder is None or not self._builder.is_alive():
            if self._fatal_error is None and not self._closed:
                self._builder = _Builder(self)
                self._builder.start()

    def _next_chunk(self) -> int | None:
        """Called by the builder: the next chunk to build, waiting while there is none."""
        with self._lock:
            while True:
                if self._closed or self._stopping or self._fatal_error is not None:
                    return None
                while self._requested:
                    k = self._requested.pop(0)
                    if self._claim(k):
                        return k
                ahead = range(self._cursor, min(self._cursor + self.prefetch_chunks, self.n_chunks))
                for k in ahead:
                    if self._claim(k):
                        return k
                if self._build_all:
                    for k in np.flatnonzero(self._state == MISSING):
                        if self._claim(int(k)):
                            return int(k)
                self._lock.wait(timeout=0.5)

    def _in_memory(self, k: int):
        """Under the lock: chunk ``k`` if it is in RAM, queued or being written, else None."""
        chunk = self._ram.get(k)
        if chunk is None and self._writing is not None and self._writing[0] == k:
            chunk = self._writing[1]
        if chunk is None:
            chunk = next((b for c, b, _, _ in self._write_queue if c == k), None)
        return chunk

    def _claim(self, k: int) -> bool:
        """Under the lock: take chunk ``k`` for writing if nobody has it and it is missing."""
        if self._state[k] != MISSING or k in self._claimed or self._in_memory(k) is not None:
            return False
        self._claimed.add(k)
        return True

    def _build_chunk(self, reader: Reader, k: int) -> None:
        f = self.chunk_frames
        start, stop = k * f, k * f + self._chunk_len(k)
        block = np.zeros((stop - start,) + (self.info.height, self.info.width, 3), np.uint8)
        error: DecodeError | None = None
        n = 0
        try:
            for n, raw in enumerate(reader.iter_raw(start, stop)):
                block[n] = self.mapping.apply(raw)
                with self._lock:  # publish each frame at once: a first read waits for one frame
                    self._building = (k, block, n + 1)
                    self._lock.notify_all()
            n = stop - start
        except SamtrackError as e:
            bad = getattr(e, "frame", start + n)
            error = e if isinstance(e, DecodeError) else DecodeError(str(e), frame=bad)
            n = max(0, bad - start)
        with self._lock:  # hand the chunk to readers before the disk write
            self._building = None
            self._ram[k] = block
            self._ram.move_to_end(k)
            while len(self._ram) > self._ram_chunks:
                self._ram.popitem(last=False)
            if error is not None:
                for i in range(start + n, stop):
                    self._errors[i] = f"frame {i}: {error}"
            self._lock.notify_all()
        self._queue_write(k, block, DONE if error is None else PARTIAL, streamed=False)

    def _cached_chunk(self, k: int) -> np.ndarray:
        """Chunk ``k`` from disk (its state says it is there): direct shard read, else zarr."""
        block = self._direct.read_chunk(k, self._chunk_len(k)) if self._direct is not None else None
        if block is None:
            lo = k * self.chunk_frames
            block = np.asarray(self._frames[lo:lo + self._chunk_len(k)])
        return block

    def _cached_frame(self, index: int) -> np.ndarray:
        k, j = divmod(index, self.chunk_frames)
        frame = self._direct.read_frame(k, j) if self._direct is not None else None
        return frame if frame is not None else np.asarray(self._frames[index])

    def _fatal(self, e: BaseException) -> None:
        with self._lock:
            self._fatal_error = e
            self._lock.notify_all()


def _signature_of(path: Path) -> dict | None:
    """The ``signature`` attribute of the zarr group at ``path`` (read-only), None when unreadable."""
    import zarr

    try:
        return zarr.open_group(path, mode="r").attrs.get("signature")
    except Exception:  # noqa: BLE001  (zarr raises several types for damaged metadata; open_signed rebuilds it)
        return None
