"""Display frame (H, W, 3) uint8 -> model-ready float32 (3, S, S), by the backend's :class:`InputSpec`.

``io`` knows no model: a backend says how its frames are prepared (size, mean, std) and this
module does it, so a frame cache serves every model family.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ImageNet statistics (torchvision's), which SAM2's video loader uses (sam2/utils/misc.py)
SAM_MEAN = (0.485, 0.456, 0.406)
SAM_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How a frame becomes a model's input: resized to ``size`` x ``size`` (bicubic, antialiased,
    rounded to the uint8 grid), scaled to [0, 1], then ``(x - mean) / std`` per RGB channel."""

    size: int
    mean: tuple[float, float, float] = SAM_MEAN
    std: tuple[float, float, float] = SAM_STD


def to_model_input(frame: np.ndarray, spec: "InputSpec | int", device="cpu"):
    """Resize to ``spec.size`` square and normalize with ``spec``'s mean/std.

    ``frame``: (H, W, 3) uint8 RGB. Returns (3, S, S) float32 on ``device``. An int
    ``spec`` means SAM2's statistics at that size. The resize is bicubic with
    antialiasing and the result is rounded to the uint8 grid before normalizing, which
    mirrors upstream's JPEG loader (``PIL.Image.resize`` then ``/ 255``) closely.
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(spec, InputSpec):
        spec = InputSpec(int(spec))
    size = spec.size
    t = torch.from_numpy(np.ascontiguousarray(frame))
    if torch.device(device).type == "cuda":
        t = t.pin_memory()  # an upload from pageable memory would wait for the whole GPU queue
    t = t.to(device, non_blocking=True)
    t = t.permute(2, 0, 1)[None].float()
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        t = t.clamp_(0, 255).round_()
    t = t[0] / 255.0
    mean = torch.tensor(spec.mean, device=t.device).view(3, 1, 1)
    std = torch.tensor(spec.std, device=t.device).view(3, 1, 1)
    return ((t - mean) / std).contiguous()  # a frame already at size S stays channels-last strided otherwise
