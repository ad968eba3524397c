"""A random-init SAM2.1 tiny at a small image size, saved as an official-format checkpoint."""
from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from samtrack.session.backends.sam2_backend import build_model, hydra_overrides
from samtrack.session.models import get_model

IMAGE_SIZE = 256

# -- built checkpoints, once per test process ---------------------------------------------------------
# Building and saving a random model costs about a second (SAM2.1 tiny, 156 MB) to several (SAM3), and
# the suite asks for the same few checkpoints dozens of times. The first request for a key builds the
# file in a private folder; every request (the first included) gets the file at the path it asked for
# (the weights a fresh build gives, tensor for tensor), and torch's global RNG is left exactly as
# building would have left it. The file is a hard link to the built one where the file system allows
# (a plain copy otherwise): a suite run wrote 8.7 GB of checkpoint copies into /tmp before, and filled
# a nearly full disk. A test that writes into its checkpoint in place would change the built file for
# every link: the built file's size and mtime are checked on each request and it is built again when
# they changed (and such a test should write a new file instead).
_BUILT: dict[tuple, tuple[Path, torch.Tensor, tuple[int, int]]] = {}
_BUILT_DIR: list[Path] = []
_NAMES = itertools.count()


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def cached_checkpoint(key: tuple, path: Path, build: Callable[[Path], None]) -> Path:
    """``build(file)`` once per process for ``key``; ``path`` gets that file (hard link or copy)."""
    path = Path(path)
    entry = _BUILT.get(key)
    if entry is None or not entry[0].exists() or _stamp(entry[0]) != entry[2]:
        if not _BUILT_DIR:
            _BUILT_DIR.append(Path(tempfile.mkdtemp(prefix="samtrack-test-ckpts-")))
            atexit.register(shutil.rmtree, _BUILT_DIR[0], True)
        master = _BUILT_DIR[0] / f"{next(_NAMES)}.pt"  # unique also when a build asks for another first
        build(master)
        _BUILT[key] = (master, torch.get_rng_state(), _stamp(master))
    master, rng, _ = _BUILT[key]
    if path.exists() or path.is_symlink():
        path.unlink()
    try:
        os.link(master, path)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(master, path)
    torch.set_rng_state(rng)
    return path


def make_checkpoint(path: Path, *, model: str = "sam2.1_hiera_tiny", image_size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """Random weights, with the object-score head biased so objects are present (masks are not all empty).
    Built once per test process for each (model, image_size, seed); ``path`` gets a copy."""
    return cached_checkpoint(("sam2", model, image_size, seed), path,
                             lambda f: _build_checkpoint(f, model=model, image_size=image_size, seed=seed))


def _build_checkpoint(path: Path, *, model: str, image_size: int, seed: int) -> None:
    torch.manual_seed(seed)
    m = build_model(get_model(model), image_size=image_size)
    with torch.no_grad():
        head = m.sam_mask_decoder.pred_obj_score_head
        last = head.layers[-1] if hasattr(head, "layers") else head
        last.bias.fill_(8.0)
        for mlp in m.sam_mask_decoder.output_hypernetworks_mlps:  # wider logits: a stronger test signal
            mlp.layers[-1].weight.mul_(30.0)
    torch.save({"model": m.state_dict()}, path)


def upstream_predictor(ckpt: Path, *, image_size: int = IMAGE_SIZE, correct_as_cond: bool = False):
    from sam2.build_sam import build_sam2_video_predictor

    extra = hydra_overrides(image_size)[1 + 5:]  # image size and RoPE sizes only (post-processing is added by upstream)
    if correct_as_cond:
        extra.append("++model.add_all_frames_to_correct_as_cond=true")
    return build_sam2_video_predictor(get_model("sam2.1_hiera_tiny").config, str(ckpt), device="cpu",
                                      hydra_overrides_extra=extra)


def upstream_features(predictor, frames_store, image_size: int = IMAGE_SIZE) -> dict:
    """Upstream's own image features of samtrack's model-ready frames, in the form of upstream's
    ``inference_state["cached_features"]`` ({frame: (image, backbone_out)}, what its
    ``_get_image_feature`` computes on a cache miss with ``forward_image``). Given to
    :func:`upstream_state`, upstream's propagation reads them instead of encoding every frame again on
    every pass: the image encoder is a fixed function of the weights and the frame, so any predictor
    built from the same checkpoint gets the same features."""
    out = {}
    with torch.inference_mode():
        for i in range(len(frames_store)):
            image = frames_store.model_input(i, image_size).float().unsqueeze(0)
            out[i] = (image, predictor.forward_image(image))
    return out


def upstream_state(predictor, frames_store, tmp: Path, image_size: int = IMAGE_SIZE, features: dict | None = None):
    """init_state on a JPEG folder of the right size, then swap in samtrack's model-ready frames
    so that both sides see identical inputs. ``features``: :func:`upstream_features` of these frames
    (upstream then encodes none)."""
    from PIL import Image

    d = tmp / "jpg"
    d.mkdir(exist_ok=True)
    n = len(frames_store)
    for i in range(n):
        Image.fromarray(frames_store.read(i)).save(d / f"{i:05d}.jpg")
    state = predictor.init_state(str(d))
    state["images"] = torch.stack([frames_store.model_input(i, image_size) for i in range(n)])
    state["cached_features"] = dict(features) if features is not None else {}
    return state
