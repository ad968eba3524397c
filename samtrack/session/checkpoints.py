"""Find, download (resumable, verified) and read SAM checkpoints.

A checkpoint is ``{"model": state_dict}`` as published (a bare state dict is
accepted too). Lookup order: an explicit path; ``$SAMTRACK_CHECKPOINTS``; the
cache directory ``~/.cache/samtrack/checkpoints``; then a download when the
network allows.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from pathlib import Path
from typing import Callable

from samtrack.errors import CheckpointError
from samtrack.session.models import MODELS, ModelSpec

log = logging.getLogger(__name__)


def checkpoint_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SAMTRACK_CHECKPOINTS"):
        dirs.append(Path(os.environ["SAMTRACK_CHECKPOINTS"]))
    dirs.append(Path(os.environ.get("SAMTRACK_CACHE_DIR", Path.home() / ".cache" / "samtrack")) / "checkpoints")
    dirs.append(Path.cwd() / "checkpoints")
    return dirs


def find_checkpoint(spec: ModelSpec) -> Path | None:
    for d in checkpoint_dirs():
        p = d / spec.checkpoint
        if p.is_file():
            return p
    return None


def checkpoint_url(spec: ModelSpec) -> str:
    """The download URL: the official one, or ``$SAMTRACK_MIRROR/<file name>`` when a lab mirror is set."""
    mirror = os.environ.get("SAMTRACK_MIRROR")
    return f"{mirror.rstrip('/')}/{spec.checkpoint}" if mirror else spec.url


def how_to_get(spec: ModelSpec) -> str:
    """What a user can do without the checkpoint (library words; the CLI turns them into options)."""
    return (f"get it with `samtrack models download {spec.name}` (on a machine with internet, then copy it to "
            f"{checkpoint_dirs()[-2]}), pass checkpoint=PATH to a file you have, or checkpoint='untrained' for a "
            "pipeline check with random weights (masks are then meaningless)")


def download_checkpoint(spec: ModelSpec, *, dest_dir: Path | None = None,
                        progress: Callable[[int, int], None] | None = None, timeout: float = 5.0) -> Path:
    """Download ``spec``'s checkpoint, resuming a partial ``.part`` file; verify sha256 when known.

    ``timeout``: seconds to connect and between received blocks, so an offline machine fails
    in seconds. Raises :class:`CheckpointError` saying how to get the file otherwise (and
    mentioning the partial download only when there is one)."""
    dest_dir = Path(dest_dir or checkpoint_dirs()[-2])
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.checkpoint
    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    url = checkpoint_url(spec)
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if have and r.status != 206:  # server ignored the range: start again
                have = 0
                part.unlink(missing_ok=True)
            total = have + int(r.headers.get("Content-Length") or 0)
            with open(part, "ab") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    have += len(chunk)
                    if progress:
                        progress(have, total)
            if have < total:  # the connection dropped: urllib returns a short read without raising
                raise OSError(f"connection closed after {have} of {total} bytes")
    except OSError as e:
        kept = part.stat().st_size if part.exists() else 0
        partial = (f" The partial download ({kept / 2**20:.1f} MiB, {part}) is resumed next time." if kept else "")
        raise CheckpointError(f"cannot download {spec.checkpoint} from {url} ({e}); {how_to_get(spec)}.{partial}") from e
    if spec.sha256:
        digest = sha256_file(part)
        if digest != spec.sha256:
            part.unlink()
            raise CheckpointError(f"{spec.checkpoint}: sha256 {digest} does not match {spec.sha256}; the download was removed, try again")
    part.rename(dest)
    return dest


def checkpoint_identity(path) -> dict:
    """{"name": file name, "sha256": digest} of a checkpoint (``None``: untrained weights).

    Hashing a 900 MB checkpoint takes seconds, so digests are remembered in
    ``<cache>/checkpoint_hashes.json`` by resolved path, size and modification time."""
    if path is None:
        return {"name": "untrained", "sha256": None}
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    store = checkpoint_dirs()[-2].parent / "checkpoint_hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    digest = known.get(key)
    if digest is None:
        digest = sha256_file(p)
        known[key] = digest
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_name(f".{store.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, store)
        except OSError as e:  # a read-only cache only costs a re-hash next time
            log.debug("cannot remember checkpoint hash in %s: %s", store, e)
    return {"name": p.name, "sha256": digest}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str | os.PathLike) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e}); re-download it") from e
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path}: expected {{'model': state_dict}} or a state dict")
    return sd
