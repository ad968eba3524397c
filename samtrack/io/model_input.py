"""Display frame (H, W, 3) uint8 -> model-ready float32 (3, S, S), as SAM expects."""
from __future__ import annotations

import numpy as np

SAM_MEAN = (0.485, 0.456, 0.406)
SAM_STD = (0.229, 0.224, 0.225)


def to_model_input(frame: np.ndarray, image_size: int, device="cpu"):
    """Resize to ``image_size`` square and normalize with SAM's mean/std.

    The resize is bicubic with antialiasing and the result is rounded to the
    uint8 grid before normalizing, which mirrors upstream's JPEG loader
    (``PIL.Image.resize`` then ``/ 255``) closely; the work runs on ``device``.
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(frame))
    if torch.device(device).type == "cuda":
        t = t.pin_memory()  # an upload from pageable memory would wait for the whole GPU queue
    t = t.to(device, non_blocking=True)
    t = t.permute(2, 0, 1)[None].float()
    if t.shape[-2:] != (image_size, image_size):
        t = F.interpolate(t, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True)
        t = t.clamp_(0, 255).round_()
    t = t[0] / 255.0
    mean = torch.tensor(SAM_MEAN, device=t.device).view(3, 1, 1)
    std = torch.tensor(SAM_STD, device=t.device).view(3, 1, 1)
    return ((t - mean) / std).contiguous()  # a frame already at size S stays channels-last strided otherwise
