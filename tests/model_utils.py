"""A random-init SAM2.1 tiny at a small image size, saved as an official-format checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from samtrack.session.backends.sam2_backend import build_model, hydra_overrides
from samtrack.session.models import get_model

IMAGE_SIZE = 256


def make_checkpoint(path: Path, *, model: str = "sam2.1_hiera_tiny", image_size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """Random weights, with the object-score head biased so objects are present (masks are not all empty)."""
    torch.manual_seed(seed)
    m = build_model(get_model(model), image_size=image_size)
    with torch.no_grad():
        head = m.sam_mask_decoder.pred_obj_score_head
        last = head.layers[-1] if hasattr(head, "layers") else head
        last.bias.fill_(8.0)
        for mlp in m.sam_mask_decoder.output_hypernetworks_mlps:  # wider logits: a stronger test signal
            mlp.layers[-1].weight.mul_(30.0)
    torch.save({"model": m.state_dict()}, path)
    return path


def upstream_predictor(ckpt: Path, *, image_size: int = IMAGE_SIZE, correct_as_cond: bool = False):
    from sam2.build_sam import build_sam2_video_predictor

    extra = hydra_overrides(image_size)[1 + 5:]  # image size and RoPE sizes only (post-processing is added by upstream)
    if correct_as_cond:
        extra.append("++model.add_all_frames_to_correct_as_cond=true")
    return build_sam2_video_predictor(get_model("sam2.1_hiera_tiny").config, str(ckpt), device="cpu",
                                      hydra_overrides_extra=extra)


def upstream_state(predictor, frames_store, tmp: Path, image_size: int = IMAGE_SIZE):
    """init_state on a JPEG folder of the right size, then swap in samtrack's model-ready frames
    so that both sides see identical inputs."""
    from PIL import Image

    d = tmp / "jpg"
    d.mkdir(exist_ok=True)
    n = len(frames_store)
    for i in range(n):
        Image.fromarray(frames_store.read(i)).save(d / f"{i:05d}.jpg")
    state = predictor.init_state(str(d))
    state["images"] = torch.stack([frames_store.model_input(i, image_size) for i in range(n)])
    state["cached_features"] = {}
    return state
