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

The result masks (bool, zstd inner codec: 1.4 KB per 1080p disc mask against
11.7 KB with blosc lz4, and faster both ways) and the memory bank's logits
(float32, blosc lz4 with byte shuffle) use the same layout and are written a
few frames at a time:
:meth:`ShardWriter.update_chunk` rewrites a shard with some of its frames
replaced, copying the other frames' encoded bytes as they are (no decode), and
can store an all-zero frame as an empty inner chunk (no bytes; zarr reads the
fill value). The rewrite is again a temporary file renamed over the shard, so a
process killed mid-write leaves the previous shard, with every frame it held.
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


def _layout(array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int,
            dtype: str = "uint8") -> tuple[str, dict] | None:
    """The inner compressor (``"blosc"`` or ``"zstd"``, its configuration) when ``array_dir/zarr.json``
    is this module's layout for ``dtype`` (fill value zero, little-endian), else None."""
    try:
        meta = json.loads((Path(array_dir) / "zarr.json").read_text())
        (shard,) = meta["codecs"]
        cfg = shard["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        endian = cfg["codecs"][0].get("configuration", {}).get("endian", "little")
        ok = (shard["name"] == "sharding_indexed" and meta["data_type"] == dtype
              and meta["fill_value"] in (0, False) and endian == "little"
              and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
              and list(meta["chunk_grid"]["configuration"]["chunk_shape"]) == [chunk_frames, *frame_shape]
              and list(cfg["chunk_shape"]) == [1, *frame_shape]
              and inner in (["bytes", "blosc"], ["bytes", "zstd"])
              and [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
              and cfg["index_codecs"][0].get("configuration", {}).get("endian", "little") == "little"
              and cfg.get("index_location", "end") == "end"
              and meta.get("storage_transformers", []) == [])
        return (inner[1], dict(cfg["codecs"][1].get("configuration", {}))) if ok else None
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


def _encoder(name: str, cfg: dict, itemsize: int):
    """The numcodecs codec that encodes as zarr's ``name`` codec with configuration ``cfg``, or None."""
    from numcodecs import Blosc, Zstd

    if name == "zstd":
        return Zstd(level=int(cfg.get("level", 0)), checksum=bool(cfg.get("checksum", False)))
    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    if cfg.get("typesize", itemsize) != itemsize or cfg.get("blocksize", 0) != 0 \
            or cfg.get("shuffle", "noshuffle") not in shuffle:
        return None
    kw = dict(cname=cfg.get("cname", "lz4"), clevel=int(cfg.get("clevel", 5)), shuffle=shuffle[cfg.get("shuffle", "noshuffle")])
    try:
        return Blosc(**kw, typesize=itemsize)
    except TypeError:  # numcodecs < 0.16 takes the typesize from the array it encodes
        return Blosc(**kw)


class Encoded:
    """One frame already encoded by a :class:`ShardWriter`'s codec: ``data`` (bytes), or None for an
    all-zero frame stored as no bytes. Queued writes hold this instead of the frame: a 1080p mask is
    ~2 KB instead of 2 MB of fresh memory, which cost more in page faults (3.2 ms per frame kept until
    the flush) than encoding it at once (0.3-0.7 ms; 2-core VM)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None):
        self.data = data


class ShardWriter:
    """Writes shard ``k`` (frames (n, *frame_shape) of ``dtype``) as zarr would; an OSError (disk full) propagates."""

    def __init__(self, codec, crc, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int,
                 dtype: str = "uint8"):
        self._codec, self._crc = codec, crc
        self._dir = Path(array_dir)
        self._frame_shape = tuple(frame_shape)
        self._f = int(chunk_frames)
        self._dtype = np.dtype(dtype)

    @classmethod
    def for_array(cls, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int,
                  dtype: str = "uint8") -> "ShardWriter | None":
        """A writer when ``array_dir/zarr.json`` describes this module's layout exactly and crc32c is
        available, else None (the caller writes through zarr)."""
        layout = _layout(array_dir, frame_shape, chunk_frames, dtype)
        crc = _crc32c()
        if layout is None or crc is None:
            return None
        codec = _encoder(*layout, np.dtype(dtype).itemsize)
        return None if codec is None else cls(codec, crc, array_dir, frame_shape, chunk_frames, dtype)

    def write_chunk(self, k: int, block) -> None:
        """Frames ``block`` (n <= chunk_frames) of shard ``k``: encoded, indexed, written atomically."""
        if len(block) > self._f or tuple(block[0].shape) != self._frame_shape:
            raise ValueError(f"shard {k}: {len(block)} frames of {tuple(block[0].shape)} do not fit {self._frame_shape}")
        self._write(k, [self._encode(frame) for frame in block])

    def update_chunk(self, k: int, rows: dict[int, np.ndarray], *, skip_empty: bool = False) -> None:
        """Replace frames ``{j: frame}`` (j < chunk_frames) of shard ``k``, keeping its other frames.

        Reads the shard's encoded frames (not decoded), encodes only ``rows`` (with
        ``skip_empty``, an all-zero frame is stored as no bytes, read back as zeros) and
        writes the whole shard to a temporary file renamed into place. Raises CacheError
        when the shard on disk does not parse (nothing is overwritten then)."""
        parts: list = [None] * self._f
        if len(rows) < self._f:
            parts = self._read_parts(k)
        for j, frame in rows.items():
            if isinstance(frame, Encoded):  # encoded when queued (:meth:`encode_frame`)
                if not 0 <= j < self._f:
                    raise ValueError(f"shard {k}: frame {j} does not fit {self._f} frames")
                parts[j] = frame.data
                continue
            if not 0 <= j < self._f or tuple(frame.shape) != self._frame_shape:
                raise ValueError(f"shard {k}: frame {j} of {tuple(frame.shape)} does not fit {self._frame_shape}")
            parts[j] = None if skip_empty and not frame.any() else self._encode(frame)
        self._write(k, parts)

    def encode_frame(self, frame: np.ndarray, *, skip_empty: bool = False) -> Encoded:
        """``frame`` (frame_shape, the array's dtype) encoded now, for :meth:`update_chunk` later.
        Raises ValueError when its shape does not fit."""
        if tuple(frame.shape) != self._frame_shape:
            raise ValueError(f"a frame of {tuple(frame.shape)} does not fit {self._frame_shape}")
        return Encoded(None if skip_empty and not frame.any() else self._encode(frame))

    def decode_frame(self, enc: Encoded) -> np.ndarray:
        """The frame an :meth:`encode_frame` result holds (a new array)."""
        out = np.zeros(self._frame_shape, self._dtype)
        if enc.data is not None:
            self._codec.decode(enc.data, out=out.view(np.uint8) if self._dtype == np.bool_ else out)
        return out

    def _encode(self, frame: np.ndarray) -> bytes:
        a = np.ascontiguousarray(frame, self._dtype)
        return self._codec.encode(a.view(np.uint8) if self._dtype == np.bool_ else a)

    def _read_parts(self, k: int) -> list:
        """The encoded frames of shard ``k`` on disk (None: empty), all None when it does not exist."""
        from samtrack.errors import CacheError

        path = shard_path(self._dir, k, len(self._frame_shape))
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return [None] * self._f
        n_index = self._f * 16
        ib = data[len(data) - 4 - n_index:len(data) - 4]
        if len(data) < n_index + 4 or int(self._crc(ib)) != int.from_bytes(data[-4:], "little"):
            raise CacheError(f"{path} is damaged (its index does not check): the frames it holds cannot be kept; "
                             "delete that file and re-propagate the frames it covered")
        idx = np.frombuffer(ib, "<u8").reshape(self._f, 2)
        body = len(data) - 4 - n_index
        view = memoryview(data)
        parts: list = []
        for off, nb in idx.tolist():
            if off == _MISSING or nb == 0:
                parts.append(None)
            elif off + nb > body:
                raise CacheError(f"{path} is damaged (a frame lies past its end): delete that file and "
                                 "re-propagate the frames it covered")
            else:
                parts.append(view[off:off + nb])
        return parts

    def _write(self, k: int, parts: list) -> None:
        """Shard ``k`` from encoded frames (None: an empty chunk; the index covers chunk_frames)."""
        index = np.full((self._f, 2), _MISSING, "<u8")  # frames past the end of the video: empty chunks
        offset = 0
        for j, part in enumerate(parts):
            if part is not None:
                index[j] = (offset, len(part))
                offset += len(part)
        ib = index.tobytes()
        path = shard_path(self._dir, k, len(self._frame_shape))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                for part in parts:
                    if part is not None:
                        fh.write(part)
                fh.write(ib)
                fh.write(int(self._crc(ib)).to_bytes(4, "little"))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):  # no half-written file left behind
                os.remove(tmp)
            raise


def _content_size(chunk) -> int | None:
    """Decoded size that a blosc or zstd chunk's header states (None: neither, or not stated)."""
    if bytes(chunk[:4]) == b"\x28\xb5\x2f\xfd":  # a zstd frame: sizes after the descriptor byte
        fhd = chunk[4]
        single, fcs = (fhd >> 5) & 1, fhd >> 6
        pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
        n = (1 if single else 0, 2, 4, 8)[fcs]
        if n == 0:
            return None
        size = int.from_bytes(chunk[pos:pos + n], "little")
        return size + 256 if n == 2 else size
    return int.from_bytes(chunk[4:8], "little")  # blosc: nbytes of the uncompressed buffer


class ShardReader:
    """Reads frames ``[k*F, k*F+n)`` of shard ``k`` into numpy, or says it cannot (None)."""

    def __init__(self, codec, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int,
                 dtype: str = "uint8"):
        self._codec = codec
        self._dir = Path(array_dir)
        self._frame_shape = tuple(frame_shape)
        self._f = int(chunk_frames)
        self._dtype = np.dtype(dtype)
        self._index_bytes = self._f * 16 + 4

    @classmethod
    def for_array(cls, array_dir: Path, frame_shape: tuple[int, ...], chunk_frames: int,
                  dtype: str = "uint8") -> "ShardReader | None":
        """A reader when ``array_dir/zarr.json`` describes this module's layout exactly, else None."""
        layout = _layout(array_dir, frame_shape, chunk_frames, dtype)
        if layout is None:
            return None
        from numcodecs import Blosc, Zstd

        return cls(Blosc() if layout[0] == "blosc" else Zstd(), array_dir, frame_shape, chunk_frames, dtype)

    def _path(self, k: int) -> str:
        return shard_path(self._dir, k, len(self._frame_shape))

    def _index(self, data) -> np.ndarray | None:
        if len(data) < self._index_bytes:
            return None
        idx = np.frombuffer(data[len(data) - self._index_bytes:len(data) - 4], "<u8").reshape(self._f, 2)
        return idx

    def read_chunk(self, k: int, n: int) -> np.ndarray | None:
        """Frames 0..n-1 of shard ``k`` as (n, *frame_shape) of the array's dtype, or None."""
        try:
            with open(self._path(k), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        idx = self._index(data)
        if idx is None:
            return None
        out = np.empty((n, *self._frame_shape), self._dtype)
        body = len(data) - self._index_bytes
        view = memoryview(data)
        for j in range(n):
            if not self._decode(view, idx[j], body, out[j]):
                return None
        return out

    def read_frame(self, k: int, j: int) -> np.ndarray | None:
        """Frame ``j`` of shard ``k``, reading only the index and that frame's bytes."""
        out = np.empty(self._frame_shape, self._dtype)
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
        if off + nb > body or nb < 9 or _content_size(view[off:off + nb]) != out.nbytes:
            return False  # the header says how many bytes it holds: exactly one frame, or zarr reads it
        try:
            self._codec.decode(view[off:off + nb], out=out.view(np.uint8) if out.dtype == np.bool_ else out)
        except Exception:  # noqa: BLE001  (a damaged chunk: let zarr report it)
            return False
        return True
