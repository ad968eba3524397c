"""The frame cache's writing side: one writer thread persists chunks, a disk budget evicts.

A mixin of :class:`samtrack.io.frame_store.FrameStore` (it uses the store's lock,
states and zarr arrays). Chunks come from two producers: the builder thread
(never dropped; it waits for room) and ``iter_frames`` consumers (dropped when
the writer falls behind, with the writer then resting so that it takes at most
``stream_write_duty`` of the time).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from samtrack.io.frame_builder import lower_thread_priority as _lower_thread_priority
from samtrack.io.shards import shard_path

log = logging.getLogger("samtrack.io.frame_store")

MISSING, DONE, PARTIAL = 0, 1, 2


class ChunkWriter:
    """Writing, flushing and the disk budget of a FrameStore."""

    def _queue_write(self, k: int, block, state: int = DONE, *, streamed: bool = True) -> None:
        """Hand chunk ``k`` to the writer thread.

        A streamed chunk may be dropped (left unpersisted) when the queue is full:
        the consumer is outrunning the disk. A chunk from the builder is never
        dropped: the builder waits for room, so it runs at most the queue's length
        ahead of the disk while decoding and writing overlap.
        """
        with self._lock:
            if not streamed:
                while len(self._write_queue) >= self.write_queue_chunks and not self._closed and self._fatal_error is None:
                    if not self._drop_oldest_streamed():
                        self._start_writer()
                        self._lock.wait(timeout=0.5)
                if self._closed or self._fatal_error is not None:
                    self._claimed.discard(k)
                    return
            else:
                self.stats["streamed_chunks"] += 1
            self._write_queue.append((k, block, state, streamed))
            while len(self._write_queue) > self.write_queue_chunks and self._drop_oldest_streamed():
                pass
            self._start_writer()
            self._lock.notify_all()

    def _drop_oldest_streamed(self) -> bool:
        """Under the lock: leave the oldest queued streamed chunk unpersisted. False if there is none."""
        for j, (c, _, _, streamed) in enumerate(self._write_queue):
            if streamed:
                del self._write_queue[j]
                self._claimed.discard(c)
                self.stats["unpersisted_chunks"] += 1
                return True
        return False

    def _start_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_loop, name="samtrack-frame-writer", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        _lower_thread_priority()
        while True:
            with self._lock:
                while not self._write_queue and not self._closed:
                    self._lock.wait(timeout=0.5)
                if not self._write_queue:
                    return
                self._writing = self._write_queue.popleft()
                self._lock.notify_all()  # room in the queue for a waiting builder
            k, block, state, streamed = self._writing
            t0, dropped = time.monotonic(), self.stats["unpersisted_chunks"]
            try:
                self._persist(k, block, state)
            except BaseException as e:  # a full or read-only disk: readers get the error, nothing hangs
                log.exception("frame cache write failed")
                self._fatal(e)
                with self._lock:
                    self._writing = None
                    self._lock.notify_all()
                return
            with self._lock:
                self._writing = None
                self._lock.notify_all()
            self._enforce_disk_budget(k)
            if self.stats["unpersisted_chunks"] > dropped and self.stream_write_duty < 1:
                # the consumer outran this write: rest, so that persisting takes at most
                # `stream_write_duty` of the time while it reads faster than the disk path
                rest = (time.monotonic() - t0) * (1.0 / max(self.stream_write_duty, 1e-3) - 1.0)
                with self._lock:
                    self._lock.wait_for(lambda: self._closed, timeout=rest)

    def flush(self) -> None:
        """Wait until every queued chunk is on disk."""
        with self._lock:
            while (self._write_queue or self._writing) and self._writer is not None and self._writer.is_alive():
                self._lock.wait(timeout=0.2)

    def _persist(self, k: int, block, state: int) -> None:
        """Write one shard, then its state (a kill in between leaves it missing, never wrong)."""
        if self._shard_writer is not None:  # the cache's own layout: encoded and written directly
            self._shard_writer.write_chunk(k, block)
        else:
            start = k * self.chunk_frames
            self._frames[start:start + len(block)] = np.stack(block) if isinstance(block, list) else block
        self._state_arr[k] = state
        with self._lock:
            self._state[k] = state
            self._claimed.discard(k)
            self.stats["decoded_chunks"] += 1
            if state == PARTIAL:
                self._root.attrs["errors"] = {str(i): m for i, m in self._errors.items()}
            elif self._state.min() == DONE and not self._root.attrs.get("complete"):
                self._root.attrs["complete"] = True
            self._lock.notify_all()

    def _chunk_file(self, k: int) -> Path:
        return Path(shard_path(self.path / "frames", k))

    def _disk_sizes(self) -> dict[int, int]:
        """Under the lock: bytes on disk of each built chunk, from one stat per file per open."""
        if self._sizes is None:
            self._sizes = {}
            for k in np.flatnonzero(self._state == DONE):
                f = self._chunk_file(int(k))
                if f.exists():
                    self._sizes[int(k)] = f.stat().st_size
        return self._sizes

    def _enforce_disk_budget(self, just_built: int) -> None:
        if self.disk_budget_bytes is None:
            return
        with self._lock:
            sizes = self._disk_sizes()
            f = self._chunk_file(just_built)
            if self._state[just_built] == DONE and f.exists():
                sizes[just_built] = f.stat().st_size
            total = sum(sizes.values())
            if total <= self.disk_budget_bytes:
                return
            protect = set(range(self._cursor, self._cursor + self.prefetch_chunks)) | {just_built}
            order = sorted(sizes, key=lambda c: self._access.get(c, 0.0))
            for c in order:
                if total <= self.disk_budget_bytes:
                    break
                if c in protect:
                    continue
                self._state[c] = MISSING
                self._state_arr[c] = MISSING
                self._chunk_file(c).unlink(missing_ok=True)
                self._ram.pop(c, None)
                total -= sizes.pop(c)
                self.stats["evicted_chunks"] += 1
            if self._root.attrs.get("complete"):
                self._root.attrs["complete"] = False
