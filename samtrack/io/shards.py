"""Direct reads and writes of the frame cache's own shards, without zarr's asynchronous machinery.

zarr's synchronous API runs every read through an event loop in another thread,
decodes each inner chunk into a temporary buffer and copies it into the result:
3.6-6 ms per cached 1080p frame on a 2-core VM. The frame cache writes one
layout only (zarr v3 ``sharding_indexed``: one inner chunk per frame, bytes +
blosc inner codecs, index of little-endian uint64 (offset, nbytes) pairs plus a
crc32c at the end of the shard). For exactly that layout this module reads the
shard file and lets blosc decompress each frame straight into the output:
2.4 ms per frame. Anything else, or a shard that does not parse, returns None
and the caller reads through zarr.

Writing is the same idea: zarr's write path cost ~9.7 ms of CPU per 1080p frame
(copies into a chunk buffer, the event loop, combining buffers); encoding each
frame with blosc and writing the shard with its index and crc32c costs ~5.5 ms.
The result is the file zarr would write (tests read it back through zarr), and
it is written to a temporary name and renamed, so a reader never sees half a
shard.

Shards are only read once their chunk state says they are complete (the state
is written after the shard), so a torn shard is never read here.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_MISSING = 2**64 - 1


def _layout(array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int) -> dict | None:
    """The inner blosc configuration when ``array_dir/zarr.json`` is the frame cache's layout, else None."""
    try:
        meta = json.loads((Path(array_dir) / "zarr.json").read_text())
        (shard,) = meta["codecs"]
        cfg = shard["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        ok = (shard["name"] == "sharding_indexed" and meta["data_type"] == "uint8"
              and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
              and list(meta["chunk_grid"]["configuration"]["chunk_shape"]) == [chunk_frames, *frame_shape]
              and list(cfg["chunk_shape"]) == [1, *frame_shape]
              and inner == ["bytes", "blosc"]
              and [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
              and cfg["index_codecs"][0].get("configuration", {}).get("endian", "little") == "little"
              and cfg.get("index_location", "end") == "end"
              and meta.get("storage_transformers", []) == [])
        return dict(cfg["codecs"][1].get("configuration", {})) if ok else None
    except Exception as e:  # noqa: BLE001  (no fast path; zarr reads and writes it)
        log.debug("no direct shard access for %s: %s", array_dir, e)
        return None


def shard_path(array_dir, k: int, frame_ndim: int = 3) -> str:
    """The file of shard ``k`` under the default chunk-key encoding: ``c/k/0/0/0``."""
    return os.path.join(array_dir, "c", str(k), *(["0"] * frame_ndim))


def _crc32c():
    """crc32c(bytes) -> int, from the package zarr itself uses, or None."""
    try:
        import google_crc32c

        return google_crc32c.value
    except ImportError:
        try:
            import crc32c

            return crc32c.crc32c
        except ImportError:
            return None


class ShardWriter:
    """Writes shard ``k`` (frames (n, *frame_shape) uint8) as zarr would; an OSError (disk full) propagates."""

    def __init__(self, codec, crc, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int):
        self._codec, self._crc = codec, crc
        self._dir = Path(array_dir)
        self._frame_shape = tuple(frame_shape)
        self._f = int(chunk_frames)

    @classmethod
    def for_array(cls, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int) -> "ShardWriter | None":
        blosc = _layout(array_dir, frame_shape, chunk_frames)
        crc = _crc32c()
        if blosc is None or crc is None or blosc.get("typesize", 1) != 1 or blosc.get("blocksize", 0) != 0:
            return None
        from numcodecs import Blosc

        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        if blosc.get("shuffle", "noshuffle") not in shuffle:
            return None
        codec = Blosc(cname=blosc.get("cname", "lz4"), clevel=int(blosc.get("clevel", 5)),
                      shuffle=shuffle[blosc.get("shuffle", "noshuffle")])
        return cls(codec, crc, array_dir, frame_shape, chunk_frames)

    def write_chunk(self, k: int, block) -> None:
        """Frames ``block`` (n <= chunk_frames) of shard ``k``: encoded, indexed, written atomically."""
        if len(block) > self._f or tuple(block[0].shape) != self._frame_shape:
            raise ValueError(f"shard {k}: {len(block)} frames of {tuple(block[0].shape)} do not fit {self._frame_shape}")
        parts = [self._codec.encode(np.ascontiguousarray(frame, np.uint8)) for frame in block]
        index = np.full((self._f, 2), _MISSING, "<u8")  # frames past the end of the video: empty chunks
        offset = 0
        for j, part in enumerate(parts):
            index[j] = (offset, len(part))
            offset += len(part)
        ib = index.tobytes()
        path = shard_path(self._dir, k, len(self._frame_shape))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                for part in parts:
                    fh.write(part)
                fh.write(ib)
                fh.write(int(self._crc(ib)).to_bytes(4, "little"))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):  # no half-written file left behind
                os.remove(tmp)
            raise


class ShardReader:
    """Reads frames ``[k*F, k*F+n)`` of shard ``k`` into numpy, or says it cannot (None)."""

    def __init__(self, codec, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int):
        self._codec = codec
        self._dir = Path(array_dir)
        self._frame_shape = tuple(frame_shape)
        self._f = int(chunk_frames)
        self._index_bytes = self._f * 16 + 4

    @classmethod
    def for_array(cls, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int) -> "ShardReader | None":
        """A reader when ``array_dir/zarr.json`` describes the frame cache's layout exactly, else None."""
        blosc = _layout(array_dir, frame_shape, chunk_frames)
        if blosc is None:
            return None
        from numcodecs import Blosc

        return cls(Blosc(), array_dir, frame_shape, chunk_frames)

    def _path(self, k: int) -> str:
        return shard_path(self._dir, k, len(self._frame_shape))

    def _index(self, data) -> np.ndarray | None:
        if len(data) < self._index_bytes:
            return None
        idx = np.frombuffer(data[len(data) - self._index_bytes:len(data) - 4], "<u8").reshape(self._f, 2)
        return idx

    def read_chunk(self, k: int, n: int) -> np.ndarray | None:
        """Frames 0..n-1 of shard ``k`` as (n, *frame_shape) uint8, or None."""
        try:
            with open(self._path(k), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        idx = self._index(data)
        if idx is None:
            return None
        out = np.empty((n, *self._frame_shape), np.uint8)
        body = len(data) - self._index_bytes
        view = memoryview(data)
        for j in range(n):
            if not self._decode(view, idx[j], body, out[j]):
                return None
        return out

    def read_frame(self, k: int, j: int) -> np.ndarray | None:
        """Frame ``j`` of shard ``k``, reading only the index and that frame's bytes."""
        out = np.empty(self._frame_shape, np.uint8)
        try:
            with open(self._path(k), "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size < self._index_bytes:
                    return None
                fh.seek(size - self._index_bytes)
                idx = self._index(fh.read(self._index_bytes))
                off, nb = (int(v) for v in idx[j])
                if off == _MISSING:
                    out[...] = 0
                    return out
                if off + nb > size - self._index_bytes:
                    return None
                fh.seek(off)
                data = fh.read(nb)
        except OSError:
            return None
        return out if self._decode(memoryview(data), (0, nb), len(data), out) else None

    def _decode(self, view, entry, body: int, out: np.ndarray) -> bool:
        off, nb = int(entry[0]), int(entry[1])
        if off == _MISSING and nb == _MISSING:  # an empty inner chunk: the fill value
            out[...] = 0
            return True
        if off + nb > body or nb < 16 or int.from_bytes(view[off + 4:off + 8], "little") != out.nbytes:
            return False  # blosc's header says how many bytes it holds: exactly one frame, or zarr reads it
        try:
            self._codec.decode(view[off:off + nb], out=out)
        except Exception:  # noqa: BLE001  (a damaged chunk: let zarr report it)
            return False
        return True
