"""MemoryBank: what every object left on every frame, paged between tiers.

- device tier: the entries the last steps read (a small LRU on the compute
  device, ``device_entries`` per object), so a step copies nothing it read
  just before;
- host tier: recently used entries, full (with encoded memory): at most
  ``host_entries_per_object`` non-keyframe entries per object (a sliding
  window wider than what attention reads: 6 memories and 16 pointers) plus
  keyframes, and never more than ``host_budget_bytes``; least recently used
  go first, so RAM does not grow with the number of tracked frames;
- disk tier (zarr, ``<workdir>/memory.zarr``): every entry is written through
  as it is made, without its encoded memory (low-res logits, object pointer,
  scores, flags): enough to re-encode the memory exactly and to restart
  propagation at any frame, after a crash too. ``logits`` and ``mem_logits``
  are sharded, one file per 32 frames (``zarr_arrays.FrameArray``; banks
  written before shards keep one chunk per frame and still read and write);
  pointers are chunks of 256 frames, scores and flags of 4,096.

An entry read back from disk has ``maskmem=None``; the session re-encodes it.

Beside the tiers, :meth:`MemoryBank.scores` keeps, per object, the object score and predicted
IoU of every tracked (non-prompt, non-keyframe) entry in two float32 arrays over the video
(NaN elsewhere), rebuilt from the disk tier when a job is reopened: what a family that picks
the frames its attention reads by score (SAM3's memory selection) needs, without reading
entries back. A tracked entry's scores may still be on the compute device when it is put
(``put(..., iou=tensor)``); they are read to the host when first asked for, or when the entry
is persisted.
Device-to-host copies are ``non_blocking`` into pinned memory and the copy's
event is synchronized before any host read (INPUTS-AND-FAULTS item 14).
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from samtrack.io.result_store import hold_rows, release_rows
from samtrack.io.zarr_arrays import FrameArray, create_frame_array, written_whole
from samtrack.memory.entry import MemoryEntry

log = logging.getLogger(__name__)

_F_PRESENT, _F_PROMPT, _F_REVERSE, _F_KEY, _F_MEMLOGITS = 1, 2, 4, 8, 16


class _DiskTier:
    """One zarr group; per object: logits, mem_logits, ptr, score, iou, flags (one writer: the session)."""

    def __init__(self, path: Path, n_frames: int):
        import zarr

        self._zarr = zarr
        self.path = path
        self.n = n_frames
        self.root = zarr.open_group(path, mode="a")
        self._arrays: dict[int, dict] = {}
        self._pending: dict[int, dict[int, tuple]] = {}  # obj -> frame -> (ptr, score, iou, flags) not on disk yet
        self._logits: dict[int, dict[int, tuple]] = {}  # obj -> frame -> (logits, mem_logits | None), bulk-written at flush
        self._flushing_pending: dict[int, dict[int, tuple]] = {}  # the same two, taken by a flush being written
        self._flushing_logits: dict[int, dict[int, tuple]] = {}

    def _obj(self, obj_id: int, like: MemoryEntry | None = None) -> dict | None:
        if obj_id in self._arrays:
            return self._arrays[obj_id]
        name = f"obj_{obj_id}"
        if name not in self.root:
            if like is None:
                return None
            g = self.root.create_group(name)
            s = like.mask_logits.shape[-1]
            c = like.obj_ptr.shape[-1]
            for key in ("logits", "mem_logits"):
                create_frame_array(g, key, n_frames=self.n, frame_shape=(s, s), dtype="float32")
            for key, shape, chunks, dt in (("ptr", (self.n, c), (256, c), "float32"),
                                           ("score", (self.n,), (4096,), "float32"),
                                           ("iou", (self.n,), (4096,), "float32"),
                                           ("flags", (self.n,), (4096,), "uint8")):
                g.create_array(key, shape=shape, chunks=chunks, dtype=dt, fill_value=0)
        g = self.root[name]
        arrs = {k: written_whole(g[k]) for k in ("ptr", "score", "iou", "flags")}
        for k in ("logits", "mem_logits"):
            arrs[k] = FrameArray(g[k], self.path / name / k)
        arrs["_flags"] = np.asarray(arrs["flags"][:])  # in-memory copy: which frames exist
        self._arrays[obj_id] = arrs
        return arrs

    def write(self, obj_id: int, frame: int, e: MemoryEntry) -> None:
        a = self._obj(obj_id, e)
        flags = _F_PRESENT | (_F_PROMPT * e.from_prompt) | (_F_REVERSE * e.reverse) | (_F_KEY * e.keyframe)
        mem = None
        if e.mem_logits is not None and e.mem_logits is not e.mask_logits:
            mem = e.mem_logits[0].detach().cpu().numpy()
            flags |= _F_MEMLOGITS
        self._logits.setdefault(obj_id, {})[frame] = (e.mask_logits[0].detach().cpu().numpy(), mem)
        self._pending.setdefault(obj_id, {})[frame] = (e.obj_ptr.detach().cpu().numpy(),
                                                       float(e.object_score.reshape(-1)[0]), float(e.iou), flags)
        a["_flags"][frame] = flags

    @property
    def dirty_frames(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def snapshot(self) -> tuple:
        """Take what is queued for writing (the caller holds the bank's lock); it stays readable."""
        logits, self._logits = self._logits, {}
        pending, self._pending = self._pending, {}
        hold_rows(logits, self._flushing_logits)
        hold_rows(pending, self._flushing_pending)
        arrays = {obj_id: self._arrays[obj_id] for obj_id in set(logits) | set(pending) if obj_id in self._arrays}
        flags = {}
        for obj_id, rows in pending.items():
            if rows and obj_id in arrays:
                lo, hi = min(rows), max(rows) + 1
                flags[obj_id] = (lo, hi, arrays[obj_id]["_flags"][lo:hi].copy())
        return logits, pending, arrays, flags

    @staticmethod
    def write_snapshot(snap: tuple) -> None:
        """Logits first, then pointers/scores, then flags (a frame exists on disk once its flags say so)."""
        logits, pending, arrays, flags = snap
        for obj_id, rows in logits.items():  # one call per run of frames
            a = arrays.get(obj_id)
            if a is None:
                continue
            a["logits"].write_rows({f: v[0] for f, v in rows.items()})
            mem = {f: v[1] for f, v in rows.items() if v[1] is not None}
            if mem:
                a["mem_logits"].write_rows(mem)
        for obj_id, (lo, hi, fl) in flags.items():
            a, rows = arrays[obj_id], pending[obj_id]
            block = {k: np.asarray(a[k][lo:hi]) for k in ("ptr", "score", "iou")}
            for f, (ptr, score, iou, _) in rows.items():
                block["ptr"][f - lo], block["score"][f - lo], block["iou"][f - lo] = ptr, score, iou
            for k, v in block.items():
                a[k][lo:hi] = v
            a["flags"][lo:hi] = fl

    def release(self, snap: tuple, ok: bool) -> None:
        """After :meth:`write_snapshot` (bank lock and flush lock held): forget what is on disk;
        on failure queue it again."""
        logits, pending, _, _ = snap
        release_rows(logits, self._flushing_logits, self._logits, requeue=not ok)
        release_rows(pending, self._flushing_pending, self._pending, requeue=not ok)

    def read(self, obj_id: int, frame: int) -> MemoryEntry | None:
        a = self._obj(obj_id)
        # frames outside the video are never present (a negative index must not wrap to the end)
        if a is None or not 0 <= frame < len(a["_flags"]) or not a["_flags"][frame] & _F_PRESENT:
            return None
        fl = int(a["_flags"][frame])
        queued = self._logits.get(obj_id, {}).get(frame) or self._flushing_logits.get(obj_id, {}).get(frame)
        if queued is not None:
            logits = torch.from_numpy(queued[0].copy())[None]
            mem = torch.from_numpy(queued[1].copy())[None] if queued[1] is not None else None
        else:
            logits = torch.from_numpy(a["logits"].read(frame))[None]
            mem = torch.from_numpy(a["mem_logits"].read(frame))[None] if fl & _F_MEMLOGITS else None
        pend = self._pending.get(obj_id, {}).get(frame) or self._flushing_pending.get(obj_id, {}).get(frame)
        if pend is not None:
            ptr, score, iou = torch.from_numpy(pend[0].copy()), pend[1], pend[2]
        else:
            ptr, score, iou = torch.from_numpy(np.asarray(a["ptr"][frame])), float(a["score"][frame]), float(a["iou"][frame])
        return MemoryEntry(obj_ptr=ptr, object_score=torch.tensor([score]), mask_logits=logits, iou=iou,
                           from_prompt=bool(fl & _F_PROMPT), reverse=bool(fl & _F_REVERSE),
                           keyframe=bool(fl & _F_KEY), mem_logits=mem)

    def clear(self, obj_id: int, frames) -> None:
        a = self._obj(obj_id)
        if a is None:
            return
        for f in frames:
            self._pending.get(obj_id, {}).pop(f, None)
            self._logits.get(obj_id, {}).pop(f, None)
            if a["_flags"][f]:
                a["flags"][f] = 0
                a["_flags"][f] = 0

    def reverse_flags(self, obj_id: int) -> np.ndarray:
        """(N,) bool: the entry on each frame was made by a backward pass (False where absent)."""
        a = self._obj(obj_id)
        return np.zeros(self.n, bool) if a is None else (a["_flags"] & _F_REVERSE).astype(bool)

    def tracked_scores(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(object score, IoU) float32 per frame of the tracked entries written so far (NaN elsewhere)."""
        score, iou = np.full(self.n, np.nan, np.float32), np.full(self.n, np.nan, np.float32)
        a = self._obj(obj_id)
        if a is not None:
            fl = a["_flags"]
            tracked = ((fl & _F_PRESENT) != 0) & ((fl & (_F_PROMPT | _F_KEY)) == 0)
            if tracked.any():
                score[tracked] = np.asarray(a["score"][:], np.float32)[tracked]
                iou[tracked] = np.asarray(a["iou"][:], np.float32)[tracked]
                for q in (self._flushing_pending.get(obj_id, {}), self._pending.get(obj_id, {})):
                    for f, (_, sc, io, flags) in q.items():
                        if tracked[f]:
                            score[f], iou[f] = sc, io
        return score, iou

    def frames(self, obj_id: int) -> np.ndarray:
        a = self._obj(obj_id)
        return np.zeros(0, int) if a is None else np.flatnonzero(a["_flags"] & _F_PRESENT)

    def drop_object(self, obj_id: int) -> None:
        self._arrays.pop(obj_id, None)
        self._pending.pop(obj_id, None)
        self._logits.pop(obj_id, None)
        name = f"obj_{obj_id}"
        if name in self.root:
            del self.root[name]


class MemoryBank:
    """Entries by (object, frame). Thread-safe for one writer and concurrent readers."""

    def __init__(self, workdir: Path, n_frames: int, *, device: torch.device | str = "cpu",
                 host_budget_bytes: int = 2 * 2**30, device_entries: int = 32, host_entries_per_object: int = 64):
        self.n_frames = n_frames
        self.device = torch.device(device)
        self.host_budget_bytes = int(host_budget_bytes)
        self.device_entries = device_entries
        self.host_entries_per_object = host_entries_per_object
        self._host_count: collections.Counter[int] = collections.Counter()  # non-keyframe entries per object
        self._host: collections.OrderedDict[tuple[int, int], MemoryEntry] = collections.OrderedDict()
        self._host_bytes = 0
        self._dev: collections.OrderedDict[tuple[int, int], MemoryEntry] = collections.OrderedDict()
        self._pending_copies: list[torch.cuda.Event] = []
        self._pinned: dict[tuple[int, int], MemoryEntry] = {}  # prompts not yet on disk: never evicted
        self._held: dict[tuple[int, int], MemoryEntry] = {}  # tracked, waiting for persist(): never evicted
        self._disk = _DiskTier(Path(workdir) / "memory.zarr", n_frames)
        self._scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # obj -> (object score, IoU) per frame
        self._unread: dict[int, dict[int, tuple]] = {}  # obj -> frame -> (score, IoU) tensors not read yet
        self._lock = threading.RLock()
        self.flush_lock = threading.Lock()  # one flush at a time, in order; held around snapshot + write
        self.stats = collections.Counter()

    # -- writes ----------------------------------------------------------------
    def put(self, obj_id: int, frame: int, entry: MemoryEntry, *, persist: bool = True, hold: bool = False,
            iou: torch.Tensor | None = None) -> None:
        """Store an entry (on the compute device or the host); written through to disk.
        ``hold``: not written yet; kept in RAM whatever the budgets until :meth:`persist`.
        ``iou``: a tracked entry's predicted IoU as a tensor, while ``entry.iou`` is not known on the
        host yet (read when :meth:`scores` first needs it)."""
        key = (obj_id, frame)
        with self._lock:
            self._note_scores(obj_id, frame, entry, iou)
            if hold or key in self._held:
                self._held[key] = entry
            if persist and not entry.pending:
                self._disk.write(obj_id, frame, entry)
            self._drop_host(key)
            self._dev.pop(key, None)
            self._pinned.pop(key, None)
            if entry.pending:
                self._pinned[key] = entry
            elif self.device.type != "cpu":
                self._dev[key] = entry
                self._trim_device()
            else:
                self._add_host(key, entry)

    def persist(self, obj_id: int, frame: int, entry: MemoryEntry) -> None:
        """Write an entry already in the bank (put with ``persist=False``) through to disk; ``entry``
        may be its host copy."""
        with self._lock:
            self._disk.write(obj_id, frame, entry)
            self._held.pop((obj_id, frame), None)
            self._note_scores(obj_id, frame, entry, None, host=True)

    def set_maskmem(self, obj_id: int, frame: int, maskmem: torch.Tensor) -> MemoryEntry:
        """Attach re-encoded memory to an entry (keeps it in the faster tiers)."""
        e = self.get(obj_id, frame)
        e = replace(e, maskmem=maskmem)
        self.put(obj_id, frame, e, persist=False)
        return e

    def _note_scores(self, obj_id: int, frame: int, e: MemoryEntry, iou: torch.Tensor | None, host: bool = False) -> None:
        """``host``: ``e`` holds the entry's final scores on the host (:meth:`persist`)."""
        score, ious = self._score_arrays(obj_id)
        unread = self._unread.setdefault(obj_id, {})
        if e.keyframe or e.from_prompt or e.pending:
            score[frame] = ious[frame] = np.nan
            unread.pop(frame, None)
        elif iou is not None:
            unread[frame] = (e.object_score, iou)
        elif not np.isnan(e.iou) and (host or (np.isnan(ious[frame]) and frame not in unread)):
            score[frame], ious[frame] = float(e.object_score.reshape(-1)[0]), float(e.iou)
            unread.pop(frame, None)
        # else: the same tracked entry put again (its memory re-encoded): its scores are noted already

    def _score_arrays(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        arrs = self._scores.get(obj_id)
        if arrs is None:  # first use in this process: what the disk tier has (a reopened job)
            arrs = self._scores[obj_id] = self._disk.tracked_scores(obj_id)
        return arrs

    def scores(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(object score logit, predicted IoU) float32 arrays over the video for ``obj_id``'s tracked
        entries (not prompts, not keyframes), NaN elsewhere. The arrays are the bank's own (read only)."""
        with self._lock:
            score, ious = self._score_arrays(obj_id)
            unread = self._unread.get(obj_id)
            if unread:
                for f, (s, i) in unread.items():
                    score[f], ious[f] = float(s.reshape(-1)[0]), float(i.reshape(-1)[0])
                unread.clear()
            return score, ious

    # -- reads -----------------------------------------------------------------
    def get(self, obj_id: int, frame: int) -> MemoryEntry | None:
        key = (obj_id, frame)
        with self._lock:
            e = self._pinned.get(key) or self._held.get(key)
            if e is not None:
                return e
            e = self._dev.get(key)
            if e is not None:
                self._dev.move_to_end(key)
                self.stats["device_hits"] += 1
                return e
            e = self._host.get(key)
            if e is not None:
                self._sync_copies()
                self._host.move_to_end(key)
                self.stats["host_hits"] += 1
                return e
            e = self._disk.read(obj_id, frame)
            if e is not None:
                self.stats["disk_reads"] += 1
            return e

    def has(self, obj_id: int, frame: int) -> bool:
        key = (obj_id, frame)
        with self._lock:
            if key in self._dev or key in self._host or key in self._pinned or key in self._held:
                return True
            a = self._disk._obj(obj_id)
            return a is not None and 0 <= frame < len(a["_flags"]) and bool(a["_flags"][frame])

    def frames(self, obj_id: int) -> set[int]:
        with self._lock:
            s = {f for (o, f) in list(self._dev) + list(self._host) + list(self._pinned) + list(self._held)
                 if o == obj_id}
            return s | set(self._disk.frames(obj_id).tolist())

    def reverse_flags(self, obj_id: int) -> np.ndarray:
        """(N,) bool per frame: made by a backward pass (entries written so far, from RAM)."""
        with self._lock:
            return self._disk.reverse_flags(obj_id)

    def discard(self, obj_id: int, frames) -> None:
        frames = list(frames)
        with self.flush_lock, self._lock:  # not while a flush writes those frames
            for f in frames:
                self._pinned.pop((obj_id, f), None)
                self._held.pop((obj_id, f), None)
                self._dev.pop((obj_id, f), None)
                self._drop_host((obj_id, f))
                self._unread.get(obj_id, {}).pop(f, None)
                if obj_id in self._scores:
                    self._scores[obj_id][0][f] = self._scores[obj_id][1][f] = np.nan
            self._disk.clear(obj_id, frames)

    def drop_object(self, obj_id: int) -> None:
        with self.flush_lock, self._lock:
            for key in [k for k in list(self._pinned) if k[0] == obj_id]:
                self._pinned.pop(key)
            for key in [k for k in list(self._held) if k[0] == obj_id]:
                self._held.pop(key)
            for key in [k for k in list(self._dev) if k[0] == obj_id]:
                self._dev.pop(key)
            for key in [k for k in list(self._host) if k[0] == obj_id]:
                self._drop_host(key)
            self._scores.pop(obj_id, None)
            self._unread.pop(obj_id, None)
            self._disk.drop_object(obj_id)

    def flush(self) -> None:
        """Make every entry written so far durable on disk."""
        with self.flush_lock:
            self.write_snapshot(self.snapshot())

    def snapshot(self) -> tuple:
        """What is queued for the disk (call with ``flush_lock`` held); writes after it go to the next."""
        with self._lock:
            return self._disk.snapshot()

    def write_snapshot(self, snap: tuple) -> None:
        """Write a :meth:`snapshot` without holding the bank's lock: tracking goes on meanwhile."""
        ok = False
        try:
            self._disk.write_snapshot(snap)
            ok = True
        finally:
            with self._lock:
                self._disk.release(snap, ok)

    @property
    def dirty_frames(self) -> int:
        return self._disk.dirty_frames

    def close(self) -> None:
        self.flush()

    @property
    def host_bytes(self) -> int:
        return self._host_bytes

    # -- tiers -----------------------------------------------------------------
    def _trim_device(self) -> None:
        while len(self._dev) > self.device_entries:
            key, e = self._dev.popitem(last=False)
            self._add_host(key, self._offload(e))

    def _offload(self, e: MemoryEntry) -> MemoryEntry:
        """Asynchronous copy to pinned host memory; reads wait for the copy's event."""
        def host(t):
            if t is None or t.device.type == "cpu":
                return t
            dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            dst.copy_(t, non_blocking=True)
            return dst

        out = replace(e, obj_ptr=host(e.obj_ptr), object_score=host(e.object_score), mask_logits=host(e.mask_logits),
                      maskmem=host(e.maskmem), mem_logits=host(e.mem_logits) if e.mem_logits is not e.mask_logits else None)
        if self.device.type == "cuda":
            ev = torch.cuda.Event()
            ev.record()
            self._pending_copies.append(ev)
        self.stats["offloads"] += 1
        return out

    def _sync_copies(self) -> None:
        while self._pending_copies:
            self._pending_copies.pop().synchronize()

    def _add_host(self, key, e: MemoryEntry) -> None:
        self._host[key] = e
        self._host_bytes += e.nbytes()
        obj = key[0]
        if not e.keyframe:
            self._host_count[obj] += 1
            if self._host_count[obj] > self.host_entries_per_object:
                old = next(k for k, v in self._host.items() if k[0] == obj and not v.keyframe)
                self._evict(old)
        while self._host_bytes > self.host_budget_bytes and len(self._host) > 1:
            self._evict(next(iter(self._host)))

    def _evict(self, key) -> None:
        """Forget a host entry: it is on disk already."""
        self._drop_host(key)
        self.stats["host_evictions"] += 1

    def _drop_host(self, key) -> None:
        e = self._host.pop(key, None)
        if e is not None:
            self._host_bytes -= e.nbytes()
            if not e.keyframe:
                self._host_count[key[0]] -= 1
