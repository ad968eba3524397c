"""What a :class:`~samtrack.remote.session.RemoteSession` shows of the server's session: the video
(:class:`RemoteFrames`, PNG frames decoded here, a few kept), its results (:class:`RemoteResults`, cached
until the session changes), its model (:class:`RemoteBackend`), and the unpacking of downloaded exports.
"""
from __future__ import annotations

import collections
import io
import logging
import shutil
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from samtrack.remote import wire

if TYPE_CHECKING:
    from samtrack.remote.session import RemoteSession

log = logging.getLogger("samtrack.remote.client")

FRAME_CACHE = 32  # decoded display frames kept (a 1080p RGB frame is 6 MB)


@dataclass(frozen=True)
class RemoteVideoInfo:
    """The served video: ``n_frames``, ``height``, ``width`` (pixels), ``fps`` (None when unknown), ``dtype``
    of the source samples, ``source`` (its path on the server)."""

    n_frames: int
    height: int
    width: int
    fps: float | None
    dtype: str
    source: str


@dataclass(frozen=True)
class RemoteBackend:
    """What the viewer reads of a session's model: ``spec`` (the registry row, or None for a model this
    client does not know), ``name``, ``checkpoint`` (a server path, or None), ``device`` and ``image_size``."""

    spec: object
    name: str
    checkpoint: str | None
    device: str | None
    image_size: int | None


class RemoteFrames:
    """The display frames of a remote session (:class:`samtrack.session.protocol.FrameSource`), fetched
    lazily as PNG and decoded here; the last :data:`FRAME_CACHE` kept."""

    def __init__(self, session: "RemoteSession", info: RemoteVideoInfo):
        self._s = session
        self.info = info
        self.source = info.source
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.info.n_frames

    def read(self, t: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB display pixels of frame ``t`` (16-bit stacks already windowed on the server).
        Raises :class:`~samtrack.errors.FrameIndexError` outside ``0 .. n_frames - 1``."""
        t = self._s._check_frame(t)
        with self._lock:
            if t in self._cache:
                self._cache.move_to_end(t)
                return self._cache[t]
        from PIL import Image

        r = self._s._request("GET", f"/frames/{t}/image", params={"format": "png"})
        img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        img.setflags(write=False)
        with self._lock:
            self._cache[t] = img
            while len(self._cache) > FRAME_CACHE:
                self._cache.popitem(last=False)
        return img

    def close(self) -> None:
        """Forget the cached frames (the video stays on the server)."""
        with self._lock:
            self._cache.clear()


class RemoteResults:
    """Read access to a remote session's results (:class:`samtrack.session.protocol.ResultView`), cached
    until the session changes."""

    def __init__(self, session: "RemoteSession"):
        self._s = session
        self.n_frames = session.n_frames

    @property
    def object_ids(self) -> list[int]:
        """The session's object ids, ascending."""
        return self._s.obj_ids

    def object_meta(self, obj_id: int) -> dict:
        """``{"name", "parent", "color"}`` of an object; :class:`~samtrack.errors.UnknownObjectError` if none."""
        meta = self._s._object(obj_id)
        return {k: meta.get(k) for k in ("name", "parent", "color")}

    def status(self, obj_id: int) -> np.ndarray:
        """(N,) uint8 per frame (:class:`~samtrack.io.result_store.Status`)."""
        a = self._s._cached(("status", obj_id), lambda: wire.decode_array(
            self._s._json("GET", f"/objects/{int(obj_id)}/status")["status"]))
        return a.copy()

    def scores(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float32 object-score logits and (N,) float32 predicted IoU (NaN where not computed)."""
        def get():
            d = self._s._json("GET", f"/objects/{int(obj_id)}/scores")
            return wire.decode_array(d["object_score"]), wire.decode_array(d["iou"])

        o, i = self._s._cached(("scores", obj_id), get)
        return o.copy(), i.copy()

    def label_frame(self, frame: int) -> np.ndarray:
        """(H, W) uint16 (uint32 beyond id 65,535) object ids of ``frame``, 0 background (the exports' rule)."""
        frame = self._s._check_frame(frame)
        return self._s._cached(("labels", frame), lambda: wire.decode_array(
            self._s._json("GET", f"/frames/{frame}/labels")["labels"])).copy()

    def mask(self, frame: int, obj_id: int) -> np.ndarray | None:
        """(H, W) bool mask of ``obj_id`` on ``frame``, or None when the frame was never computed for it."""
        frame = self._s._check_frame(frame)
        if not 0 <= frame < self.n_frames:
            from samtrack.errors import FrameIndexError

            raise FrameIndexError(f"frame {frame} is out of range 0..{self.n_frames - 1}")
        if self.status(obj_id)[frame] == 0:
            return None
        return self._s.frame_result(frame, [obj_id]).masks[0]


def unzip_export(zf, name: str, dest: Path, frames_dir: Path | None = None) -> None:
    """Unpack the export ``name`` of the zip ``zf`` (the file ``name``, or a folder's files ``name/...``) as
    ``dest``; other members (the frames of ``write_frames``) into ``frames_dir`` (dropped without one).
    A member that is absolute or has ``..`` raises :class:`~samtrack.remote.wire.WireError`."""
    with zipfile.ZipFile(zf) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        for m in members:
            parts = PurePosixPath(m.filename).parts
            if not parts or m.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                raise wire.WireError(f"the export zip holds {m.filename!r}, a path outside it: refused")
        mine = [m for m in members if PurePosixPath(m.filename).parts[0] == name]
        if not mine:
            raise wire.WireError(f"the export zip holds no {name!r}: a server of another version?")
        if len(mine) == 1 and mine[0].filename == name:
            _extract(z, mine[0], dest)
        else:
            dest.mkdir()
            for m in mine:
                _extract(z, m, dest.joinpath(*PurePosixPath(m.filename).parts[1:]))
        rest = [m for m in members if m not in mine]
        if rest and frames_dir is None:
            log.info("export zip: %d other files (frames) not unpacked: pass frames_dir= to keep them", len(rest))
        for m in rest if frames_dir is not None else ():
            _extract(z, m, frames_dir.joinpath(*PurePosixPath(m.filename).parts))


def _extract(z: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with z.open(m) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out)


def model_spec(name):
    """The registry row of model ``name``, or None for one this client does not know."""
    from samtrack.errors import UnknownModelError
    from samtrack.session.models import get_model

    try:
        return get_model(name) if name else None
    except UnknownModelError:
        return None


