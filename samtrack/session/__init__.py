"""Tracking semantics: sessions, prompts, keyframes, propagation planning, backends.

Never imports napari or Qt.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from samtrack.errors import CheckpointError
from samtrack.session.models import MODELS, ModelSpec, get_model
from samtrack.session.session import FrameResult, SessionConfig, TrackingSession

log = logging.getLogger(__name__)
UNTRAINED = "untrained"  # checkpoint value for random weights (pipeline checks only)


def resolve_checkpoint(spec: ModelSpec, checkpoint, *, download: bool = True):
    """An explicit path, a found file, a download, or a CheckpointError that says how to get one."""
    from samtrack.session.checkpoints import checkpoint_dirs, download_checkpoint, find_checkpoint

    if checkpoint == UNTRAINED:
        log.warning("using UNTRAINED random weights for %s: masks are meaningless", spec.name)
        return None
    if checkpoint is not None:
        p = Path(checkpoint)
        if not p.is_file():
            raise CheckpointError(f"checkpoint {p} does not exist")
        return p
    found = find_checkpoint(spec)
    if found:
        return found
    if download:
        return download_checkpoint(spec)
    raise CheckpointError(f"no {spec.checkpoint} in {', '.join(map(str, checkpoint_dirs()))}; "
                          f"download it from {spec.url} or run `samtrack models download {spec.name}`")


def load_model(model: str = "sam2.1_hiera_tiny", *, checkpoint=None, image_size: int | None = None,
               device: str = "auto", download: bool = True):
    """Build ``model`` once, to pass as ``open_session(..., backend=...)`` for several videos."""
    from samtrack.session.backends.sam2_backend import load_backend

    spec = get_model(model)
    return load_backend(spec, resolve_checkpoint(spec, checkpoint, download=download), image_size=image_size,
                        device=device)


def open_session(source: Any, *, model: str = "sam2.1_hiera_tiny", checkpoint=None, image_size: int | None = None,
                 device: str = "auto", workdir: str | os.PathLike | None = None, config: SessionConfig | None = None,
                 download: bool = True, backend=None, **video_options) -> TrackingSession:
    """Open ``source`` (anything :func:`samtrack.open_video` takes) for tracking with ``model``.

    ``checkpoint``: a path, None (look in the checkpoint folders, then download),
    or ``"untrained"`` (random weights). ``image_size``: the model's input size
    (default the model's 1024; lower is faster, e.g. 512). ``workdir``: where the
    frame cache, memory and results live (default under ~/.cache/samtrack).
    ``backend``: a model already built by :func:`load_model` (then ``model``,
    ``checkpoint``, ``image_size`` and ``device`` are taken from it).
    """
    from samtrack.io import open_video
    from samtrack.session.backends.sam2_backend import load_backend

    if backend is not None:
        spec, ckpt, image_size = backend.spec, backend.checkpoint, backend.image_size
    else:
        spec = get_model(model)
        ckpt = resolve_checkpoint(spec, checkpoint, download=download)
    if workdir is None:
        from samtrack.io.frame_store import default_cache_root

        key = hashlib.sha1(f"{Path(source).resolve() if isinstance(source, (str, os.PathLike)) else id(source)}|{spec.name}|{image_size}".encode()).hexdigest()[:16]
        workdir = default_cache_root() / "sessions" / key
    frames = open_video(source, workdir=workdir, **video_options)
    try:
        if backend is None:
            backend = load_backend(spec, ckpt, image_size=image_size, device=device)
        sig = {"source": str(source) if isinstance(source, (str, os.PathLike)) else "<array>",
               "frames": frames.info.n_frames, "model": spec.name, "image_size": backend.image_size,
               "checkpoint": Path(ckpt).name if ckpt else UNTRAINED}
        return TrackingSession(frames, backend, workdir=workdir, config=config, signature=sig)
    except BaseException:
        frames.close()
        raise


__all__ = ["FrameResult", "MODELS", "SessionConfig", "TrackingSession", "get_model", "load_model", "open_session"]
