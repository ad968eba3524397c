"""FeatureStore: a frame's image-encoder output, computed once per video, model, checkpoint and size.

Layout of ``<workdir>/features.zarr`` (zarr v3): one array per named feature
(``(N, *row shape)``, the row's own dtype; bfloat16 rows are stored as their int16
bits and tagged ``bfloat16`` in the attributes, so they come back bit for bit),
shards of a few frames (about 32 MiB per shard file), one inner chunk per frame;
``present`` (N,) uint8, written after the data; attributes ``signature`` (the job
signature: source identity, reader options, model, checkpoint hash, image size),
``dtypes``, ``orders`` (each row's memory layout as put, e.g. channels-last: rows are stored in C
order and come back from :meth:`FeatureStore.get` in the layout they were put in; a store without it
returns C order). A store whose signature differs is rebuilt: features are a cache.

Rows are queued in memory and written shard by shard (each shard rewritten to a
temporary file and renamed: a kill never tears one) when a shard's frames are all
in hand, or at :meth:`flush`. The writing (compression and the file) runs on one
background thread, so the tracking loop never waits for it: at 1024 px a SAM2 frame's
features are 8 MB, a shard of 4 frames took 90-150 ms to compress and write (23-28 ms
per frame, 2-core VM), as long as a GPU tracking step. Rows being written stay readable
from memory; at most :data:`MAX_SHARDS_IN_FLIGHT` shards wait for the writer: past that,
:meth:`put` waits (memory stays bounded), or, with ``drop_when_behind`` (a session's tracking:
the store is a cache and must never slow tracking; a GPU step can be shorter than a shard
write), the shard's rows are dropped, counted in ``stats["dropped_frames"]``, and those frames
are encoded again when next needed. A write that failed (disk full, a read-only folder) is raised
by the next :meth:`put` or :meth:`flush` as a :class:`~samtrack.errors.CacheError` saying what to do
(its frames read as absent); with ``drop_when_behind`` it is logged and counted in
``stats["failed_writes"]`` instead: a cache that cannot be written never stops tracking. Beyond ``disk_budget_bytes``
the least recently used shards are removed (those frames are encoded again when
needed). Callers: one thread (the session's) puts and flushes; :meth:`get` may also run on
another (the session reads rows ahead on its prefetch thread); the writer thread is internal.

The store knows arrays, not models: what a frame's features are, and in which
dtype, is the backend's business (``features_to_store`` / ``features_from_store``).
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from samtrack.errors import CacheError, InvalidOptionError, SamtrackError
from samtrack.io.identity import normalise
from samtrack.io.shards import shard_path
from samtrack.io.zarr_arrays import FrameArray, create_frame_array, open_signed

log = logging.getLogger(__name__)
SHARD_BYTES = 32 << 20
MAX_SHARDS_IN_FLIGHT = 2  # shards handed to the writer thread and not written yet, at most


class FeatureStore:
    """Per-frame named arrays on disk, with a signature, an LRU disk budget and a write queue."""

    def __init__(self, path: str | os.PathLike, n_frames: int, *, signature: dict,
                 disk_budget_bytes: int | None = 20 * 2**30, background: bool = True,
                 drop_when_behind: bool = False):
        """``disk_budget_bytes``: bytes of shard files kept at most (int >= 0; None: no cap); anything else
        raises InvalidOptionError. ``background``: write shards on the writer thread (default), or in the caller's
        (``bench/pipeline_overhead.py`` measures the difference). ``drop_when_behind``: see the
        module's docstring. Both settable."""
        self.background = bool(background)
        self.drop_when_behind = bool(drop_when_behind)
        import zarr

        self._zarr = zarr
        self.path = Path(path)
        self.n_frames = int(n_frames)
        self.signature = normalise(signature)
        if disk_budget_bytes is not None and (isinstance(disk_budget_bytes, bool)
                                              or not isinstance(disk_budget_bytes, (int, np.integer))
                                              or disk_budget_bytes < 0):
            raise InvalidOptionError(f"feature_disk_budget_bytes={disk_budget_bytes!r}: use a number of bytes "
                                     "(0 or more; 0 keeps only the shard written last), or None for no cap")
        self.disk_budget_bytes = None if disk_budget_bytes is None else int(disk_budget_bytes)
        root = open_signed(self.path, self.signature, "image feature store")
        if root is not None and not self._usable(root):
            shutil.rmtree(self.path, ignore_errors=True)
            root = None
        if root is None:
            root = zarr.open_group(self.path, mode="w")
            root.create_array("present", shape=(self.n_frames,), chunks=(min(self.n_frames, 4096),), dtype="uint8",
                              fill_value=0)
            root.attrs.update({"signature": self.signature, "dtypes": {}})
        self._root = root
        self._present_arr = root["present"]
        self._present = np.asarray(self._present_arr[:]).astype(bool)
        self._dtypes: dict[str, str] = dict(root.attrs.get("dtypes", {}))
        # each array's memory layout as put (axes from the largest stride to the smallest); absent: C order
        self._orders: dict[str, list[int]] = {k: [int(i) for i in v] for k, v in root.attrs.get("orders", {}).items()}
        self._arrays: dict[str, FrameArray] = {}
        self._pending: dict[int, dict[str, np.ndarray]] = {}  # queued, shard not complete yet
        self._writing: dict[int, dict[str, np.ndarray]] = {}  # handed to the writer, readable until on disk
        self._lock = threading.Lock()  # _writing, _present, _lru, _sizes, eviction vs reads
        self._arrays_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: collections.deque[Future] = collections.deque()
        self._failed: BaseException | None = None
        self._lru: collections.OrderedDict[int, None] = collections.OrderedDict()  # shards, oldest first
        self._shard_frames = int(root.attrs.get("shard_frames", 0)) or None
        self._sizes: dict[int, int] | None = None  # shard -> bytes on disk (see _shard_sizes)
        self.stats = {"hits": 0, "misses": 0, "evicted_shards": 0, "dropped_frames": 0, "failed_writes": 0}

    # -- public --------------------------------------------------------------------
    def __contains__(self, frame: int) -> bool:
        with self._lock:
            return bool(self._present[frame]) or frame in self._pending or frame in self._writing

    @property
    def cached_frames(self) -> int:
        """How many frames have features here: on disk, or queued for the writer (readable already)."""
        with self._lock:
            queued = set(self._pending) | set(self._writing)
            return int(self._present.sum()) + sum(1 for f in queued if not self._present[f])

    def get(self, frame: int) -> dict[str, np.ndarray] | None:
        """The rows stored for ``frame`` ({name: array in its stored dtype, bfloat16 as int16 bits}, with
        :meth:`dtype` telling which), or None when the frame has none. The shard is read and
        decompressed outside the lock (2-20 ms for an 8 MB row: the tracking thread's ``in`` checks
        must not wait for a read ahead); an eviction during the read is detected (the store's eviction
        count) and the frame read again under the lock: a read never returns an evicted shard's zeros."""
        rows = self._pending.get(frame)
        with self._lock:
            if rows is None:
                rows = self._writing.get(frame)
            if rows is not None:
                self.stats["hits"] += 1
                return self._as_put(rows)
            if not self._present[frame]:
                self.stats["misses"] += 1
                return None
            self._touch(frame // self._shard_frames)
            self.stats["hits"] += 1
            evictions = self.stats["evicted_shards"]
        rows = self._read(frame)
        with self._lock:
            if self.stats["evicted_shards"] != evictions:
                if not self._present[frame]:  # evicted meanwhile: encoded again by the caller
                    return None
                rows = self._read(frame)
            if rows is None:  # damaged or missing on disk: never served; encoded again by the caller
                self._drop_shard(frame // self._shard_frames)
                self.stats["hits"] -= 1
                self.stats["misses"] += 1
                return None
        return self._as_put(rows)

    def dtype(self, name: str) -> str:
        """The logical dtype of array ``name`` (e.g. ``"bfloat16"`` for rows given as int16 bits)."""
        return self._dtypes[name]

    def put(self, frame: int, rows: dict[str, np.ndarray], dtypes: dict[str, str] | None = None) -> None:
        """Queue ``frame``'s rows ({name: array}); ``dtypes`` tags names whose logical dtype differs from
        the array's (bfloat16 given as int16 bits). Written (on the writer thread) when its shard is
        complete, or at :meth:`flush`. Raises ValueError for rows of other names than the store's, and
        the error of an earlier write that failed (a CacheError; not with ``drop_when_behind``)."""
        self._raise_failed()
        if not self._dtypes:
            self._create(rows, dtypes or {})
        elif set(rows) != set(self._dtypes):
            raise ValueError(f"feature rows {sorted(rows)} differ from the store's {sorted(self._dtypes)}")
        self._pending[frame] = {k: np.ascontiguousarray(v) for k, v in rows.items()}
        k = frame // self._shard_frames
        lo, hi = k * self._shard_frames, min(self.n_frames, (k + 1) * self._shard_frames)
        with self._lock:
            complete = all(self._present[f] or f in self._pending or f in self._writing for f in range(lo, hi))
        if complete:
            self._submit({f: self._pending.pop(f) for f in range(lo, hi) if f in self._pending},
                         may_drop=self.drop_when_behind)

    def flush(self, wait: bool = True) -> None:
        """Write every queued row; ``wait``: until it is on disk (else the writer goes on in the
        background: the end of a propagation need not wait for a cache). Raises the error of a write
        that failed (with ``wait=False``, one that has failed so far)."""
        if self._pending:
            pending, self._pending = self._pending, {}
            self._submit(pending, may_drop=self.drop_when_behind and not wait)
        while self._in_flight and (wait or self._in_flight[0].done()):
            self._wait_oldest()
        self._raise_failed()

    def close(self) -> None:
        """:meth:`flush`, then stop the writer thread (also when the flush raised)."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    # -- internals ---------------------------------------------------------------------
    def _create(self, rows: dict[str, np.ndarray], dtypes: dict[str, str]) -> None:
        frame_bytes = sum(v.nbytes for v in rows.values())
        self._shard_frames = int(np.clip(SHARD_BYTES // max(frame_bytes, 1), 1, 32))
        for name, v in rows.items():
            if name not in self._root:
                create_frame_array(self._root, name, n_frames=self.n_frames, frame_shape=tuple(v.shape),
                                   dtype=str(v.dtype), shard_frames=self._shard_frames)
            self._dtypes[name] = dtypes.get(name, str(v.dtype))
            self._orders[name] = memory_order(v)
        self._root.attrs.update({"dtypes": self._dtypes, "orders": self._orders, "shard_frames": self._shard_frames})

    def _as_put(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``rows`` (C order, as stored) in the memory layout they were put in."""
        return {name: with_memory_order(a, self._orders.get(name)) for name, a in rows.items()}

    def _array(self, name: str) -> FrameArray:
        with self._arrays_lock:  # the caller's thread (reads) and the writer thread both open them
            a = self._arrays.get(name)
            if a is None:
                a = self._arrays[name] = FrameArray(self._root[name], self.path / name)
            return a

    def _shard_file(self, name: str, k: int) -> str:
        """The file of array ``name``'s shard ``k`` (the array's handle is opened once: reading the group's
        metadata per call cost 0.7 ms per array, on every frame read)."""
        return shard_path(self.path / name, k, len(self._array(name).shape) - 1)

    def _submit(self, rows: dict[int, dict[str, np.ndarray]], may_drop: bool) -> None:
        """Hand ``rows`` to the writer thread; while MAX_SHARDS_IN_FLIGHT are queued, first wait, or
        drop them (``may_drop``)."""
        if not rows:
            return
        with self._lock:  # readable from here on, also while waiting for room below
            self._writing.update(rows)
        while self._in_flight and self._in_flight[0].done():
            self._wait_oldest()
        if may_drop and self.background and len(self._in_flight) >= MAX_SHARDS_IN_FLIGHT:
            if not self.stats["dropped_frames"]:
                log.info("the feature store's writer is behind tracking: features of frames %s.. not cached "
                         "(they are encoded again when needed)", min(rows))
            self.stats["dropped_frames"] += len(rows)
            self._unlist(rows)
            return
        try:
            while len(self._in_flight) >= MAX_SHARDS_IN_FLIGHT:
                self._wait_oldest()
        except BaseException:
            self._unlist(rows)
            raise
        if not self.background:
            self._write(rows)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samtrack-features")
        self._in_flight.append(self._pool.submit(self._write, rows))

    def _wait_oldest(self) -> None:
        """Wait for the oldest queued write. Its failure is kept for the next put / flush (the caller
        decides what a lost write costs) and logged; an interrupt (Ctrl-C) while waiting leaves the
        write queued and is raised at once."""
        fut = self._in_flight[0]
        try:
            fut.result()
        except Exception as e:  # noqa: BLE001
            log.warning("writing image features to %s failed: %s: %s", self.path, type(e).__name__, e)
            self.stats["failed_writes"] += 1
            if not isinstance(e, SamtrackError):
                err = CacheError(f"writing image features to {self.path} failed ({type(e).__name__}: {e}): free "
                                 "disk space or make the folder writable, lower feature_disk_budget_bytes, or "
                                 "open the session with SessionConfig(feature_store=False)")
                err.__cause__ = e
                e = err
            self._failed = self._failed or e
        self._in_flight.popleft()

    def _unlist(self, rows: dict) -> None:
        with self._lock:
            for f in rows:
                if self._writing.get(f) is rows[f]:
                    del self._writing[f]

    def _raise_failed(self) -> None:
        """Raise the failure of an earlier write, once; with ``drop_when_behind`` (a session's tracking: the
        store is a cache) it was logged and its frames are encoded again when needed: tracking goes on."""
        if self._failed is not None:
            err, self._failed = self._failed, None
            if not self.drop_when_behind:
                raise err

    def _write(self, rows: dict[int, dict[str, np.ndarray]]) -> None:
        """Write ``rows`` (the writer thread): data first, then the frames' presence. On failure the
        frames read as absent (their shard files hold what they held before)."""
        try:
            try:
                self._write_rows(rows)
            except CacheError as e:  # a damaged shard cannot keep its other frames: they go, these are written
                log.warning("image feature shard damaged (%s): its frames are encoded again when needed", e)
                with self._lock:
                    for k in sorted({f // self._shard_frames for f in rows}):
                        self._drop_shard(k)
                self._write_rows(rows)
            frames = sorted(rows)
            written = {f // self._shard_frames for f in frames}
            # the presence of the written shards' every frame: a shard dropped as damaged lost its other frames
            lo, hi = min(written) * self._shard_frames, min(self.n_frames, (max(written) + 1) * self._shard_frames)
            new_sizes = {k: self._shard_bytes(k) for k in sorted(written)}  # file stats: not under the lock
            with self._lock:
                self._present[frames] = True
                present = self._present[lo:hi].astype(np.uint8)
            self._present_arr[lo:hi] = present  # only this thread writes the presence array
            with self._lock:
                sizes = self._shard_sizes()
                for k, n in new_sizes.items():
                    self._touch(k)
                    sizes[k] = n
                self._enforce_budget(keep=written)  # past the budget only: removes files under the lock
        finally:
            self._unlist(rows)

    def _write_rows(self, rows: dict[int, dict[str, np.ndarray]]) -> None:
        for name in self._dtypes:
            self._array(name).write_rows({f: r[name] for f, r in rows.items()})

    def _usable(self, root) -> bool:
        """Whether a signed store's structure can be read: ``present`` of this video's length and readable,
        every array its ``dtypes`` names there with one row per frame, and ``shard_frames`` when it has
        arrays. A store that fails (a damaged or deleted ``present``, an array's metadata garbled or
        removed: a kill, a disk error, a user's cleanup) is rebuilt, as one of another job is."""
        try:
            present = root["present"]
            ok = tuple(present.shape) == (self.n_frames,)
            any_present = bool(np.asarray(present[:]).any())
            dtypes = dict(root.attrs.get("dtypes", {}))
            ok = ok and (bool(dtypes) or not any_present)
            if dtypes:
                ok = ok and int(root.attrs.get("shard_frames", 0)) > 0
                ok = ok and all(root[name].shape[0] == self.n_frames for name in dtypes)
            if ok:
                return True
            log.warning("image feature store %s does not fit this video: rebuilding", self.path)
        except Exception as e:  # noqa: BLE001  (zarr raises several types for damaged metadata and chunks)
            log.warning("image feature store %s damaged (%s: %s): rebuilding", self.path, type(e).__name__, e)
        return False

    def _read(self, frame: int) -> dict[str, np.ndarray] | None:
        """``frame``'s rows from its shard files, or None when a file is missing or does not decode (a
        missing shard would read as zeros through zarr: wrong features, never served)."""
        k = frame // self._shard_frames
        try:
            rows = {}
            for name in self._dtypes:
                p = self._shard_file(name, k)
                if not os.path.exists(p):
                    raise FileNotFoundError(f"{p} is missing")
                rows[name] = self._array(name).read(frame)
            return rows
        except Exception as e:  # noqa: BLE001  (zarr and blosc raise several types for damaged data)
            log.warning("image features of frame %d unreadable (%s: %s): encoded again", frame, type(e).__name__, e)
            return None

    def _drop_shard(self, k: int) -> None:
        """Forget shard ``k`` (under ``_lock``): its frames read as absent and its files go. The presence on
        disk is left to the writer thread (its only writer); a later open finds the files missing."""
        lo, hi = k * self._shard_frames, min(self.n_frames, (k + 1) * self._shard_frames)
        self._present[lo:hi] = False
        if self._sizes is not None:
            self._sizes.pop(k, None)
        self._lru.pop(k, None)
        for name in self._dtypes:
            p = self._shard_file(name, k)
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not remove the damaged feature shard %s: %s", p, e)

    def _touch(self, k: int) -> None:
        self._lru[k] = None
        self._lru.move_to_end(k)

    def _shard_bytes(self, k: int) -> int:
        total = 0
        for name in self._dtypes:
            p = self._shard_file(name, k)
            total += os.path.getsize(p) if os.path.exists(p) else 0
        return total

    def _shard_sizes(self) -> dict[int, int]:
        """{shard: bytes on disk}, read from the files once (shards of earlier runs count as the least
        recently used), then kept up to date by writes and evictions: no stat per shard per write."""
        if self._sizes is None:
            self._sizes = {}
            for k in sorted({int(f) // self._shard_frames for f in np.flatnonzero(self._present)}):
                self._sizes[k] = self._shard_bytes(k)
                if k not in self._lru:
                    self._lru[k] = None
                    self._lru.move_to_end(k, last=False)
        return self._sizes

    def _enforce_budget(self, keep: set[int]) -> None:
        if self.disk_budget_bytes is None:
            return
        sizes = self._shard_sizes()
        total = sum(sizes.values())
        for k in list(self._lru):
            if total <= self.disk_budget_bytes:
                break
            if k not in keep:
                total -= self._evict(k)

    def _evict(self, k: int) -> int:
        size = self._shard_sizes().pop(k, 0)
        lo, hi = k * self._shard_frames, min(self.n_frames, (k + 1) * self._shard_frames)
        self._present[lo:hi] = False
        self._present_arr[lo:hi] = np.zeros(hi - lo, np.uint8)  # absent first, then the data goes
        for name in self._dtypes:
            p = self._shard_file(name, k)
            if os.path.exists(p):
                os.remove(p)
        self._lru.pop(k, None)
        self.stats["evicted_shards"] += 1
        log.debug("feature shard %d evicted (%d bytes)", k, size)
        return size


def memory_order(a: np.ndarray) -> list[int]:
    """The axes of ``a`` from the largest stride to the smallest (C order: ``[0, 1, ..., ndim - 1]``; a
    channels-last (C, H, W) row: ``[1, 2, 0]``)."""
    return [int(i) for i in np.argsort([-s for s in a.strides], kind="stable")]


def with_memory_order(a: np.ndarray, order: list[int] | None) -> np.ndarray:
    """``a`` (same shape and values) laid out in memory in ``order`` (see :func:`memory_order`); ``a``
    itself when it already is or ``order`` is None. Why it matters: the CPU's vectorized kernels (AVX-512)
    round differently on different layouts, so a row read back must have the layout the encoder gave for
    tracking from it to equal tracking from a fresh encoding bit for bit."""
    if order is None or memory_order(a) == list(order) or a.ndim != len(order):
        return a
    return np.ascontiguousarray(a.transpose(order)).transpose(np.argsort(order))
