"""zarr settings and per-frame arrays shared by samtrack's caches (frames, results, memory bank)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from samtrack.io.shards import Encoded, ShardReader, ShardWriter

log = logging.getLogger(__name__)

# Frames per shard file of a per-frame array (result masks, logits). One file per
# frame per array was ~100,000 files per object-hour at 30 fps; 32 frames per file
# is ~3,400, and a flush every 32 frames rewrites at most two partly filled shards.
SHARD_FRAMES = 32


def written_whole(array):
    """``array`` with zarr's empty-chunk check turned off.

    By default zarr compares every chunk it writes with the fill value, to skip
    storing empty ones. On the frame cache that comparison was 41 % of write
    time (25 ms per 1080p frame, 5 ms without it, on a 2-core VM): samtrack's
    chunks are rarely empty, and completeness is tracked apart from the data, so
    every chunk is written. The setting is per handle (not saved in the
    metadata), so it is applied at every open. zarr < 3.1 lacks ``with_config``:
    the array is returned unchanged.
    """
    with_config = getattr(array, "with_config", None)
    return with_config({"write_empty_chunks": True}) if with_config is not None else array


def open_signed(path: str | Path, signature: dict, what: str):
    """The zarr group at ``path`` opened for writing when its ``signature`` attribute equals
    ``signature``; otherwise (another source or job, or unreadable metadata, which is never trusted)
    the folder is removed and None is returned, so the caller builds it anew. The one rule every
    signed cache follows (frame cache, image features)."""
    import shutil

    import zarr

    path = Path(path)
    if not path.exists():
        return None
    try:
        root = zarr.open_group(path, mode="r+")
        if root.attrs.get("signature") == signature:
            return root
        log.info("%s %s was made from something else: rebuilding", what, path)
    except Exception as e:  # noqa: BLE001  (zarr raises several types for damaged metadata)
        log.warning("%s %s unreadable (%s): rebuilding", what, path, e)
    shutil.rmtree(path, ignore_errors=True)
    return None


def create_frame_array(group, name: str, *, n_frames: int, frame_shape: tuple[int, ...], dtype: str,
                       shard_frames: int = SHARD_FRAMES) -> None:
    """An (n_frames, *frame_shape) array in ``group``: shards of SHARD_FRAMES frames, one inner chunk per
    frame, fill value zero. Masks (bool) are compressed with zstd level 1: a 1080p disc mask is 1.4 KB,
    0.7 ms to encode, 0.3 ms to decode (blosc lz4: 11.7 KB, 1.1 ms, 0.6 ms; 2-core VM). float32 logits
    with blosc lz4 after a byte shuffle (0.6 ms and 0.04 ms per 256x256 frame; zstd level 3 saves
    ~20 % of bytes for 4x the encode time on the flush thread). ``shard_frames``: frames per shard file
    (fewer for large rows, such as image features)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    f = max(1, min(shard_frames, n_frames))
    if np.dtype(dtype) == np.bool_:
        codec = ZstdCodec(level=1)
    else:
        codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)
    group.create_array(name, shape=(n_frames, *frame_shape), dtype=dtype, shards=(f, *frame_shape),
                       chunks=(1, *frame_shape), compressors=[codec], fill_value=0)


class FrameArray:
    """One row per frame of a zarr array: rows written in batches by one writer, read one at a time.

    Two layouts are read and written. The sharded one (:func:`create_frame_array`) is
    written directly (io/shards.py): each touched shard is rewritten once per batch,
    to a temporary file renamed into place, so a kill never tears a shard and never
    loses the frames it held; with ``skip_empty`` an all-zero row costs no bytes.
    Any other layout (one chunk per frame, as stores made before shards) goes
    through zarr, one call per run of consecutive frames, as before.
    """

    def __init__(self, array, array_dir: str | Path, *, skip_empty: bool = False):
        self.shape: tuple[int, ...] = tuple(array.shape)
        frame_shape, dtype = self.shape[1:], str(array.dtype)
        shards = getattr(array, "shards", None)
        self.frames_per_file = int(shards[0]) if shards else int(array.chunks[0])
        self._skip_empty = skip_empty
        self._writer = self._reader = None
        if shards:
            self._writer = ShardWriter.for_array(Path(array_dir), frame_shape, self.frames_per_file, dtype)
            self._reader = ShardReader.for_array(Path(array_dir), frame_shape, self.frames_per_file, dtype)
        # zarr's handle: a sharded array skips empty inner chunks itself; one chunk per frame: written whole
        self._zarr = array if shards and skip_empty else written_whole(array)

    @property
    def sharded(self) -> bool:
        return self._writer is not None

    def encode(self, row: np.ndarray):
        """``row`` ready to queue for :meth:`write_rows`: encoded now when sharded (an
        :class:`~samtrack.io.shards.Encoded`, a few KB for a mask), else a private copy.
        Raises ValueError when its shape does not fit."""
        if self._writer is None:
            return np.array(row, dtype=self._zarr.dtype, copy=True)
        return self._writer.encode_frame(row, skip_empty=self._skip_empty)

    def decode(self, queued) -> np.ndarray:
        """A new array with the row an :meth:`encode` result holds."""
        return self._writer.decode_frame(queued) if isinstance(queued, Encoded) else queued.copy()

    def write_rows(self, rows: dict) -> None:
        """Store ``{frame: row}`` (arrays, or :meth:`encode` results); each shard touched is written once."""
        if self._writer is None:
            write_runs(self._zarr, {i: self.decode(r) if isinstance(r, Encoded) else r for i, r in rows.items()})
            return
        f = self.frames_per_file
        by_shard: dict[int, dict[int, np.ndarray]] = {}
        for i, row in rows.items():
            by_shard.setdefault(i // f, {})[i % f] = row
        for k in sorted(by_shard):
            self._writer.update_chunk(k, by_shard[k], skip_empty=self._skip_empty)

    def read(self, frame: int) -> np.ndarray:
        """Row ``frame`` (zeros where never written)."""
        if self._reader is not None:
            row = self._reader.read_frame(frame // self.frames_per_file, frame % self.frames_per_file)
            if row is not None:
                return row
        return np.asarray(self._zarr[frame])


def write_runs(arr, rows: dict[int, np.ndarray]) -> None:
    """Write {index: row} into the zarr array ``arr`` with one call per run of consecutive indices."""
    idx = sorted(rows)
    start = 0
    for i in range(1, len(idx) + 1):
        if i == len(idx) or idx[i] != idx[i - 1] + 1:
            lo, hi = idx[start], idx[i - 1] + 1
            arr[lo:hi] = np.stack([rows[k] for k in range(lo, hi)])
            start = i
