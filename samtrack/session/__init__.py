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
from samtrack.io.folder_lock import FolderLock
from samtrack.session.models import MODELS, ModelSpec, get_model
from samtrack.session.session import FrameResult, SessionConfig, TrackingSession
from samtrack.session.devices import releases_openmp_team

log = logging.getLogger(__name__)
UNTRAINED = "untrained"  # checkpoint value for random weights (pipeline checks only)


def resolve_checkpoint(spec: ModelSpec, checkpoint, *, download: bool = True):
    """An explicit path, a found file, a download, or a CheckpointError that says how to get one."""
    from samtrack.session.checkpoints import checkpoint_dirs, download_checkpoint, find_checkpoint, how_to_get

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
    raise CheckpointError(f"no {spec.checkpoint} in {', '.join(map(str, checkpoint_dirs()))}; {how_to_get(spec)}")


def load_model(model: str | None = None, *, checkpoint=None, image_size: int | None = None,
               device: str = "auto", download: bool = True):
    """Build ``model`` once, to pass as ``open_session(..., backend=...)`` for several videos (``model``:
    as :func:`open_session` takes it)."""
    from samtrack.session.backends import load_backend
    from samtrack.session.checkpoints import resolve_model

    spec = resolve_model(model, checkpoint)
    return load_backend(spec, resolve_checkpoint(spec, checkpoint, download=download), image_size=image_size,
                        device=device)


def job_signature(frames, spec: ModelSpec, checkpoint, image_size: int) -> dict:
    """What decides whether a work folder's results and memory belong to this job: the source's
    identity (resolved path + content, :mod:`samtrack.io.identity`), the reader and its options,
    the intensity window, the model, the checkpoint's sha256 and the image size."""
    from samtrack.io.identity import normalise
    from samtrack.session.checkpoints import checkpoint_identity

    fs = frames.signature
    return normalise({"format": 2, "source": fs["source"], "reader": fs["reader"],
                      "reader_options": fs["reader_options"], "intensity": fs["intensity"], "model": spec.name,
                      "checkpoint": checkpoint_identity(ckpt_path(checkpoint)), "image_size": int(image_size)})


def ckpt_path(checkpoint):
    """``checkpoint`` as a Path, or None for no file (None, or "untrained": random weights)."""
    return None if checkpoint in (None, UNTRAINED) else Path(checkpoint)


def default_workdir(source, spec: ModelSpec, image_size) -> Path:
    """``<cache>/sessions/<key>``: one folder per source identity, model and image size."""
    from samtrack.io.frame_store import default_cache_root
    from samtrack.io.identity import source_identity

    # a path: its resolved spelling (the job signature checks its content); an array: its content
    where = str(Path(source).resolve()) if isinstance(source, (str, os.PathLike)) else source_identity(source)["content"]
    key = hashlib.sha1(f"{where}|{spec.name}|{image_size}".encode()).hexdigest()[:16]
    return default_cache_root() / "sessions" / key


@releases_openmp_team
def open_session(source: Any, *, model: str | None = None, checkpoint=None, image_size: int | None = None,
                 device: str = "auto", workdir: str | os.PathLike | None = None, config: SessionConfig | None = None,
                 download: bool = True, backend=None, reset: bool = False, folder_lock: FolderLock | None = None,
                 **video_options) -> TrackingSession:
    """Open ``source`` (anything :func:`samtrack.open_video` takes) for tracking with ``model``.

    ``model``: a registry name (``samtrack models``); None: the model a ``checkpoint`` file
    is (recognised by its state dict), else the default (``samtrack models default``).
    ``checkpoint``: a path, None (look in the checkpoint folders, then download),
    or ``"untrained"`` (random weights). ``image_size``: the model's input size
    (default the model's 1024; lower is faster, e.g. 512). ``workdir``: where the
    frame cache, memory and results live (default under ~/.cache/samtrack, one
    folder per source, model and image size). ``backend``: a model already built
    by :func:`load_model` (then ``model``, ``checkpoint``, ``image_size`` and
    ``device`` are taken from it).

    A workdir whose results were computed for another job (:func:`job_signature`:
    another video or changed content, model, checkpoint, image size or reader
    options) raises :class:`~samtrack.errors.JobMismatchError` naming what differs;
    ``reset=True`` discards those results and memory instead (the frame cache is
    rebuilt on its own when the video changed).

    A workdir is written by one session at a time: while a session (of this process or
    another, e.g. a ``samtrack track`` still running) has it open, opening it raises
    :class:`~samtrack.errors.SessionInUseError` naming the holder, before any model is loaded.
    ``folder_lock``: the workdir's :class:`~samtrack.io.folder_lock.FolderLock`, already taken by a caller
    that changes the folder first (``samtrack track --force``); the session holds it from then on
    (released at close, or here when opening fails). A lock not held, or another folder's, raises
    :class:`~samtrack.errors.InvalidOptionError`.
    """
    from samtrack.io import open_video
    from samtrack.session.backends import load_backend

    if backend is not None:
        spec, ckpt, image_size = backend.spec, backend.checkpoint, backend.image_size
    else:
        from samtrack.session.checkpoints import resolve_model
        from samtrack.session.devices import pick_device

        spec = resolve_model(model, checkpoint)
        device = pick_device(device)  # a device this machine lacks: an error before any work
        ckpt = resolve_checkpoint(spec, checkpoint, download=download)
    if workdir is None:
        workdir = default_workdir(source, spec, image_size)
    # before any work: a folder another session writes is refused at once
    lock = folder_lock if folder_lock is not None else FolderLock(workdir).acquire()
    try:
        lock.check_guards(workdir)
        frames = open_video(source, workdir=workdir, **video_options)
    except BaseException:
        lock.release()
        raise
    try:
        if backend is None:
            backend = load_backend(spec, ckpt, image_size=image_size, device=device)
        sig = job_signature(frames, spec, ckpt, backend.image_size)
        return TrackingSession(frames, backend, workdir=workdir, config=config, signature=sig, reset=reset,
                               folder_lock=lock)
    except BaseException:
        frames.close()
        lock.release()
        raise


__all__ = ["FrameResult", "MODELS", "SessionConfig", "TrackingSession", "get_model", "job_signature", "load_model",
           "open_session"]
