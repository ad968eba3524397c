"""Find, download (through the Hugging Face hub, verified) and read SAM checkpoints.

A checkpoint is ``{"model": state_dict}`` as published (a bare state dict is
accepted too). Lookup order (:func:`find_checkpoint`): an explicit path;
``$SAMTRACK_CHECKPOINTS``; the cache folder ``<cache>/checkpoints`` (``$SAMTRACK_CACHE_DIR``,
default ``~/.cache/samtrack``), both as plain files and as a hub cache (what
:func:`download_checkpoint` writes); ``./checkpoints``; the user's own Hugging Face cache
(``~/.cache/huggingface/hub``, where the ``sam3`` package puts ``facebook/sam3``); then a
download when the network allows (:mod:`samtrack.session.hub`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from samtrack.errors import CheckpointError
from samtrack.session import hub
from samtrack.session.models import MODELS, ModelSpec

log = logging.getLogger(__name__)


def checkpoint_dirs() -> list[Path]:
    """Folders searched for a checkpoint file by its official name, in order: ``$SAMTRACK_CHECKPOINTS``
    (when set), ``<cache>/checkpoints`` (also where downloads go: ``[-2]``), ``./checkpoints``."""
    dirs = []
    if os.environ.get("SAMTRACK_CHECKPOINTS"):
        dirs.append(Path(os.environ["SAMTRACK_CHECKPOINTS"]))
    dirs.append(Path(os.environ.get("SAMTRACK_CACHE_DIR", Path.home() / ".cache" / "samtrack")) / "checkpoints")
    dirs.append(Path.cwd() / "checkpoints")
    return dirs


def download_dir() -> Path:
    """``<cache>/checkpoints``: the hub cache :func:`download_checkpoint` writes
    (``models--facebook--<repo>/snapshots/<commit>/<file>``)."""
    return checkpoint_dirs()[-2]


def find_checkpoint(spec: ModelSpec) -> Path | None:
    """``spec``'s checkpoint on this machine, or None. Local files only (never the network): each of
    :func:`checkpoint_dirs` as a plain ``<dir>/<file name>`` and as a hub cache, then the user's
    Hugging Face cache (:func:`samtrack.session.hub.user_cache_dir`)."""
    for d in checkpoint_dirs():
        p = d / spec.checkpoint
        if p.is_file():
            return p
        found = hub.cached_file(spec.hf_id, spec.checkpoint, d)
        if found:
            return found
    return hub.cached_file(spec.hf_id, spec.checkpoint, hub.user_cache_dir())


def checkpoint_url(spec: ModelSpec) -> str:
    """Where :func:`download_checkpoint` gets the file: ``<hub>/<hf_id>/resolve/main/<file name>``, the hub
    being ``$SAMTRACK_MIRROR`` (a lab's hub mirror), ``$HF_ENDPOINT`` or huggingface.co."""
    return hub.file_url(spec.hf_id, spec.checkpoint)


def how_to_get(spec: ModelSpec) -> str:
    """What a user can do without the checkpoint (library words; the CLI turns them into options)."""
    gated = (f"{spec.name} is gated: first accept its licence at {spec.model_page} while logged in to Hugging "
             "Face and set HF_TOKEN to a read token; " if spec.gated else "")
    return (f"get it with `samtrack models download {spec.name}` ({gated}or, on a machine with internet, download "
            f"{spec.url} and copy {spec.checkpoint} to {download_dir()}), pass checkpoint=PATH to a file you have, "
            "or checkpoint='untrained' for a pipeline check with random weights (masks are then meaningless)")


def download_checkpoint(spec: ModelSpec, *, dest_dir: Path | None = None,
                        progress: Callable[[int, int], None] | None = None, timeout: float = 5.0,
                        token: str | None = None, endpoint: str | None = None) -> Path:
    """Download ``spec``'s checkpoint (and its ``hf_files``) from the hub into the hub cache ``dest_dir``
    (default :func:`download_dir`) and return the checkpoint's path; a file already there is returned
    without touching the network.

    Goes through :func:`samtrack.session.hub.download_file`: verified against the hub's sha256
    (and ``spec.sha256`` when known), a dropped connection resumed, safe when several processes
    download the same file at once. ``progress(done, total)``: bytes of the checkpoint.
    ``timeout``: seconds for the first answer, so an offline machine fails in seconds.
    ``token``: a Hugging Face token (default ``$HF_TOKEN`` or the stored login); ``endpoint``:
    another hub (default ``$SAMTRACK_MIRROR``, ``$HF_ENDPOINT``, huggingface.co).

    Raises :class:`CheckpointError` saying what to do: access for a gated model (401/403),
    how to get the file otherwise (:func:`how_to_get`)."""
    cache = Path(dest_dir) if dest_dir is not None else download_dir()
    common = dict(cache_dir=cache, token=token, endpoint=endpoint, timeout=timeout, gated=spec.gated,
                  how_to_get=how_to_get(spec))
    path = hub.download_file(spec.hf_id, spec.checkpoint, progress=progress, expected_sha256=spec.sha256, **common)
    for extra in spec.hf_files:
        hub.download_file(spec.hf_id, extra, **common)
    log.info("%s: %s", spec.name, path)
    return path


def resolve_model(model: str | None, checkpoint=None) -> ModelSpec:
    """The registry row a session uses: ``model`` when named (a name or alias); else, for a checkpoint
    file, the model that file is (:func:`model_for_checkpoint`: a fine-tuned checkpoint of any family);
    else the default model (:func:`samtrack.session.models.default_model`). ``checkpoint``: a path,
    None or "untrained". Raises UnknownModelError / CheckpointError saying what to do."""
    from samtrack.session.models import get_model

    if model is None and checkpoint is not None and str(checkpoint) != "untrained":
        return model_for_checkpoint(checkpoint)
    return get_model(model)


def model_for_checkpoint(path: str | os.PathLike) -> ModelSpec:
    """The registered model a checkpoint file belongs to, recognised from its state dict by
    :func:`samtrack.session.backends.recognise` (every family whose package imports).

    A variant of a registered model (SAM3's ``sam3_tiny`` test preset) gives that model's row; its
    backend reads the variant from the checkpoint. The file is memory-mapped, not read. Raises :class:`CheckpointError` for a missing or
    unreadable file, a model of a known family that is not registered (the message describes it),
    or a state dict no family recognises."""
    import torch

    from samtrack.session.backends import recognise

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        sd = obj.get("model", obj) if isinstance(obj, dict) else None
    except Exception:  # not the zip format mmap needs (or damaged): read it whole, with its errors
        sd = load_state_dict(p)
    found = recognise(sd) if isinstance(sd, dict) and sd else None
    if found in MODELS:
        return MODELS[found]
    variant_of = [m for m in MODELS.values() if found and found.startswith(m.name + "_")]
    if variant_of:  # a variant a backend builds from the checkpoint itself (SAM3's "sam3_tiny" test preset)
        return max(variant_of, key=lambda m: len(m.name))
    if found:
        raise CheckpointError(f"{p} holds {found}, which samtrack has no registry row for; models it knows: "
                              f"{', '.join(MODELS)}")
    raise CheckpointError(f"{p} is not a checkpoint of any model family samtrack knows (SAM2, SAM2.1, SAM3, "
                          "checked by their state-dict keys); pass model=NAME to say which model it is")


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


sha256_file = hub.sha256_file  # one implementation (hub verifies downloads with it)


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
