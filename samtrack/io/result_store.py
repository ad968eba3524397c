"""ResultStore: per-frame masks at video resolution, scores and status, in zarr.

Layout of ``<workdir>/results.zarr``: per object ``obj_<id>/`` with ``mask``
(N, H, W) bool, ``status`` (N,) uint8, ``object_score`` and ``iou`` (N,)
float32, ``source`` (N,) int32 (the keyframe whose pass produced the frame, -1
none). Attributes: ``objects`` ({id: {name, parent, color}}), ``video``
(VideoInfo), ``signature``.

``mask`` is sharded: one file per 32 frames (an inner chunk per frame, zstd),
written by the flush only (one writer per shard) as a whole new file
renamed into place; an empty mask is stored as no bytes. Stores written before
shards (one chunk per frame) are read and written in their own layout (see
``zarr_arrays.FrameArray``). The vectors are chunks of 4,096 frames; zarr
>= 3.1 writes them to a temporary file renamed into place too.

A frame never computed reads as status NOT_RUN, never as an empty mask.
"""
from __future__ import annotations

import threading
from enum import IntEnum
from pathlib import Path

import numpy as np

from samtrack.errors import CacheError, FrameIndexError, UnknownObjectError
from samtrack.io.zarr_arrays import FrameArray, create_frame_array


_VECTORS = ("object_score", "iou", "source", "status")  # written in this order: status last


class Status(IntEnum):
    """Per object and frame (uint8 on disk): never computed, tracked by propagation, prompted
    (a keyframe), or stale (computed, then made out of date by a prompt change)."""

    NOT_RUN = 0
    PROPAGATED = 1
    PROMPTED = 2
    STALE = 3


class ResultStore:
    """A job's results in ``<workdir>/results.zarr``: per object, (N, H, W) bool masks (video pixel grid)
    and (N,) status, object score, predicted IoU and source keyframe; object names/parents/colours and
    prompts as attributes. Writes are queued and reach the disk at :meth:`flush`. Raises
    :class:`CacheError` when the folder holds another job's results."""

    def __init__(self, path: str | Path, *, n_frames: int, height: int, width: int, signature: dict | None = None):
        import zarr

        self.path = Path(path)
        self.n_frames, self.height, self.width = n_frames, height, width
        self.root = zarr.open_group(self.path, mode="a")
        old = self.root.attrs.get("signature")
        if signature is not None and old is not None and old != signature:
            raise CacheError(f"{self.path} holds results of another job ({old.get('source')}, {old.get('model')}); "
                             "use another workdir, or delete it to start over")
        if old is None and signature is not None:
            self.root.attrs["signature"] = signature
        if "video" not in self.root.attrs:
            self.root.attrs["video"] = {"n_frames": n_frames, "height": height, "width": width}
        self._lock = threading.RLock()
        self._cache: dict[int, dict] = {}
        self._dirty: dict[int, set[int]] = {}  # frames whose small vectors are not on disk yet
        self._masks: dict[int, dict] = {}  # masks not written yet, encoded (FrameArray.encode; bulk-written at flush)
        self._flushing: dict[int, dict] = {}  # masks being written by a flush (still readable)
        self.flush_lock = threading.Lock()  # one flush at a time, in order; held around snapshot + write
        self._objects: dict[str, dict] = dict(self.root.attrs.get("objects", {}))

    # -- objects ---------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        """Ids of the objects held, ascending."""
        return sorted(int(k) for k in self._objects)

    def object_meta(self, obj_id: int) -> dict:
        """A copy of ``{"name", "parent", "color"}`` of an object (KeyError for an unknown id)."""
        return dict(self._objects[str(obj_id)])

    def add_object(self, obj_id: int, *, name: str | None = None, parent: int | None = None, color=None) -> None:
        """Add an object, or update the fields given (None keeps the stored value); its arrays are created."""
        with self._lock:
            meta = self._objects.get(str(obj_id), {})
            meta.update({"name": name or meta.get("name") or f"object-{obj_id}",
                         "parent": parent if parent is not None else meta.get("parent"),
                         "color": list(color) if color is not None else meta.get("color")})
            self._objects[str(obj_id)] = meta
            self.root.attrs["objects"] = self._objects
            self._arrays(obj_id)

    def close(self) -> None:
        """Write what is queued."""
        self.flush()

    def remove_object(self, obj_id: int) -> None:
        """Forget an object: its queued writes, metadata, prompts and arrays (waits for a running flush)."""
        with self.flush_lock, self._lock:  # not while a flush writes into its arrays
            self._dirty.pop(obj_id, None)
            self._masks.pop(obj_id, None)
            self._flushing.pop(obj_id, None)
            self._objects.pop(str(obj_id), None)
            self.root.attrs["objects"] = self._objects
            prompts = dict(self.root.attrs.get("prompts", {}))
            if prompts.pop(str(obj_id), None) is not None:
                self.root.attrs["prompts"] = prompts
            self._cache.pop(obj_id, None)
            if f"obj_{obj_id}" in self.root:
                del self.root[f"obj_{obj_id}"]

    def _arrays(self, obj_id: int) -> dict:
        a = self._cache.get(obj_id)
        if a is not None:
            return a
        if str(obj_id) not in self._objects:
            raise UnknownObjectError(f"object {obj_id} has no results; known: {self.object_ids}")
        name = f"obj_{obj_id}"
        n, h, w = self.n_frames, self.height, self.width
        if name not in self.root:
            g = self.root.create_group(name)
            create_frame_array(g, "mask", n_frames=n, frame_shape=(h, w), dtype="bool")
            g.create_array("status", shape=(n,), chunks=(min(n, 4096),), dtype="uint8", fill_value=0)
            g.create_array("object_score", shape=(n,), chunks=(min(n, 4096),), dtype="float32", fill_value=np.nan)
            g.create_array("iou", shape=(n,), chunks=(min(n, 4096),), dtype="float32", fill_value=np.nan)
            g.create_array("source", shape=(n,), chunks=(min(n, 4096),), dtype="int32", fill_value=-1)
        g = self.root[name]
        a = {k: g[k] for k in ("mask", "status", "object_score", "iou", "source")}
        a["mask"] = FrameArray(a["mask"], self.path / name / "mask", skip_empty=True)
        # small per-frame vectors live in RAM too (N bytes each), written through
        for k in ("status", "object_score", "iou", "source"):
            a["_" + k] = np.asarray(a[k][:])
        self._cache[obj_id] = a
        return a

    # -- writes ----------------------------------------------------------------
    def write(self, frame: int, obj_id: int, mask: np.ndarray, *, status: Status, object_score: float,
              iou: float, source: int) -> None:
        """Store one object's mask (H, W) bool on one frame. Mask, scores and status are queued and
        reach the disk at :meth:`flush` (masks first, status last), so after a crash a frame reads
        as computed only if its mask is there."""
        self._check(frame)
        with self._lock:
            a = self._arrays(obj_id)
        queued = a["mask"].encode(np.asarray(mask, dtype=bool))  # encoded now: KBs held, not MBs (shards.Encoded)
        with self._lock:
            self._masks.setdefault(obj_id, {})[frame] = queued
            for k, v in (("object_score", object_score), ("iou", iou), ("source", source), ("status", int(status))):
                a["_" + k][frame] = v
            self._dirty.setdefault(obj_id, set()).add(frame)

    @property
    def dirty_frames(self) -> int:
        """Object-frames whose scores/status are queued, not on disk yet."""
        return sum(len(v) for v in self._dirty.values())

    def flush(self) -> None:
        """Write what is queued: masks first, then per-frame vectors (status last)."""
        with self.flush_lock:
            self.write_snapshot(self.snapshot())

    def snapshot(self) -> tuple:
        """Take what is queued for writing (call with ``flush_lock`` held, then :meth:`write_snapshot`).

        Writes made after the snapshot go to the next one; the snapshot's masks
        stay readable through :meth:`mask` until they are on disk."""
        with self._lock:
            masks, self._masks = self._masks, {}
            hold_rows(masks, self._flushing)
            vectors = []
            for obj_id, frames in self._dirty.items():
                if frames and obj_id in self._cache:
                    a = self._cache[obj_id]
                    lo, hi = min(frames), max(frames) + 1
                    vectors.append((obj_id, a, lo, hi, {k: a["_" + k][lo:hi].copy() for k in _VECTORS}))
            self._dirty = {}
            arrays = {obj_id: self._cache[obj_id]["mask"] for obj_id in masks if obj_id in self._cache}
        return masks, arrays, vectors

    def write_snapshot(self, snap: tuple) -> None:
        """Write a :meth:`snapshot` to zarr (no lock held while writing). On failure what it
        held is queued again, so a later flush retries it, and the error is raised."""
        masks, arrays, vectors = snap
        ok = False
        try:
            for obj_id, rows in masks.items():  # masks first, one zarr call per contiguous run
                if obj_id in arrays:
                    _bulk_write(arrays[obj_id], rows)
            for _, a, lo, hi, vals in vectors:
                for k in _VECTORS:  # status last
                    a[k][lo:hi] = vals[k]
            ok = True
        finally:
            self._release(snap, ok)

    def requeue(self, snap: tuple) -> None:
        """A :meth:`snapshot` that will not be written now: queue what it holds again."""
        self._release(snap, False)

    def _release(self, snap: tuple, written: bool) -> None:
        # called under flush_lock, so no object was removed since the snapshot
        masks, _, vectors = snap
        with self._lock:
            release_rows(masks, self._flushing, self._masks, requeue=not written)
            if not written:
                for obj_id, _, lo, hi, _ in vectors:
                    self._dirty.setdefault(obj_id, set()).update(range(lo, hi))

    def set_status(self, obj_id: int, frames, status: Status) -> None:
        """Set ``status`` on ``frames`` (frame indices) of an object; on disk at the next flush."""
        frames = np.asarray(list(frames), dtype=int)
        if frames.size == 0:
            return
        with self._lock:
            a = self._arrays(obj_id)
            a["_status"][frames] = int(status)
            self._dirty.setdefault(obj_id, set()).update(frames.tolist())  # on disk at flush()

    # -- prompts (so that a session reopens where it was) ------------------------
    def save_prompt(self, obj_id: int, frame: int, record: dict | None, mask: np.ndarray | None = None) -> None:
        """Record (or with ``record=None`` forget) the prompt of one object on one frame."""
        with self._lock:
            prompts = dict(self.root.attrs.get("prompts", {}))
            per = dict(prompts.get(str(obj_id), {}))
            key = f"{obj_id}_{frame}"
            if record is None:
                per.pop(str(frame), None)
                if "prompt_masks" in self.root and key in self.root["prompt_masks"]:
                    del self.root["prompt_masks"][key]
            else:
                if mask is not None:
                    g = self.root.require_group("prompt_masks")
                    if key in g:
                        del g[key]
                    g.create_array(key, data=np.asarray(mask, bool), chunks=mask.shape)
                per[str(frame)] = record
            prompts[str(obj_id)] = per
            self.root.attrs["prompts"] = prompts

    def save_concepts(self, records: list[dict]) -> None:
        """Replace the job's object-creating prompts (plain JSON records, see session.prompts)."""
        with self._lock:
            self.root.attrs["concepts"] = list(records)

    def load_concepts(self) -> list[dict]:
        """The object-creating prompt records saved by :meth:`save_concepts`."""
        return list(self.root.attrs.get("concepts", []))

    def load_prompts(self) -> dict[int, dict[int, tuple[dict, np.ndarray | None]]]:
        """{object: {frame: (prompt record, (H, W) bool mask of a mask prompt or None)}}."""
        out: dict = {}
        for oid, per in self.root.attrs.get("prompts", {}).items():
            for f, rec in per.items():
                m = None
                if rec.get("kind") == "mask":
                    m = np.asarray(self.root["prompt_masks"][f"{oid}_{f}"][:])
                out.setdefault(int(oid), {})[int(f)] = (rec, m)
        return out

    # -- reads -----------------------------------------------------------------
    def status(self, obj_id: int) -> np.ndarray:
        """(N,) uint8 :class:`Status` per frame (a copy)."""
        return self._arrays(obj_id)["_status"].copy()

    def sources(self, obj_id: int) -> np.ndarray:
        """(N,) int32 keyframe whose pass computed each frame, -1 where none (a copy)."""
        return self._arrays(obj_id)["_source"].copy()

    def scores(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float32 object-presence logits and (N,) predicted IoUs, NaN where not computed (copies)."""
        a = self._arrays(obj_id)
        return a["_object_score"].copy(), a["_iou"].copy()

    def mask(self, frame: int, obj_id: int) -> np.ndarray | None:
        """(H, W) bool, or None when the frame was never computed for this object."""
        self._check(frame)
        a = self._arrays(obj_id)
        if a["_status"][frame] == Status.NOT_RUN:
            return None
        with self._lock:  # queued, or being written by a flush: from RAM; else on disk
            queued = self._masks.get(obj_id, {}).get(frame)
            if queued is None:
                queued = self._flushing.get(obj_id, {}).get(frame)
        if queued is not None:
            return a["mask"].decode(queued)
        return a["mask"].read(frame)

    def label_frame(self, frame: int) -> np.ndarray:
        """(H, W) uint16 (uint32 beyond id 65,535) object-id labels, 0 background; overlapping objects
        flattened by the exports' one rule (smaller object on top: :mod:`samtrack.io.export.labels`)."""
        from samtrack.io.export.labels import label_frame

        return label_frame(self, frame)

    def _check(self, frame: int) -> None:
        if not 0 <= frame < self.n_frames:
            raise FrameIndexError(f"frame {frame} is out of range 0..{self.n_frames - 1}")


def hold_rows(taken: dict, held: dict) -> None:
    """{obj: {frame: row}} a flush took: kept readable in ``held`` until :func:`release_rows`."""
    for obj_id, rows in taken.items():
        held.setdefault(obj_id, {}).update(rows)


def release_rows(taken: dict, held: dict, queue: dict, *, requeue: bool) -> None:
    """After a flush: forget its rows from ``held``; with ``requeue`` (it failed), queue again those
    that no later write replaced."""
    for obj_id, rows in taken.items():
        h = held.get(obj_id, {})
        for f, v in rows.items():
            if h.get(f) is v:
                del h[f]
                if requeue:
                    queue.setdefault(obj_id, {}).setdefault(f, v)
        if not h:
            held.pop(obj_id, None)


def _bulk_write(arr: FrameArray, rows: dict[int, np.ndarray]) -> None:
    """Write one object's queued masks {frame: (H, W) bool}: each shard they fall in is rewritten once."""
    arr.write_rows(rows)
