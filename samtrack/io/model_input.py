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


# Bump when the model input of a frame changes (a feature cache built from other inputs is rebuilt):
# 2 = resized on the uint8 grid (PIL's arithmetic), on the host, for every device.
MODEL_INPUT_VERSION = 2


@dataclass(frozen=True)
class InputSpec:
    """How a frame becomes a model's input: resized to ``size`` x ``size`` (bicubic, antialiased,
    on the uint8 grid), scaled to [0, 1], then ``(x - mean) / std`` per RGB channel."""

    size: int
    mean: tuple[float, float, float] = SAM_MEAN
    std: tuple[float, float, float] = SAM_STD


def resize_uint8(frame: np.ndarray, size: int, *, pin: bool = False):
    """(H, W, 3) uint8 RGB -> (3, size, size) uint8 torch tensor on the host.

    Bicubic (a = -0.5) with antialiasing, computed in torch's uint8 kernel, which follows
    Pillow's fixed-point resampling: within 1-2 levels of ``PIL.Image.resize(..., BICUBIC)``
    (upstream's JPEG loader) at a few pixels, 0.003-0.01 levels on average (``bench/resize_vs_upstream.py``;
    the float32 kernel used before was 0.15-0.22 levels off on average, up to 6). It is also ~5x
    faster than the float32 kernel on the CPU (1080p -> 1024: 4.6 ms against 22 ms, 2 threads).
    ``pin``: page-locked memory, for an asynchronous copy to a GPU.
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    t = t[0].contiguous()
    return t.pin_memory() if pin else t


def normalize(t, spec: InputSpec, device="cpu"):
    """(3, S, S) uint8 tensor -> (3, S, S) float32 on ``device``: ``(x / 255 - mean) / std``.

    The same float32 operations in the same order as upstream's loader (``/ 255``, ``-= mean``,
    ``/= std``), done in place; IEEE division and subtraction give the same values on every device."""
    import torch

    x = t.to(device, non_blocking=True).float().div_(255.0)
    mean, std = _stats(spec, x.device)
    return x.sub_(mean).div_(std)


_STATS: dict = {}


def _stats(spec: InputSpec, device):
    """(mean, std) as (3, 1, 1) float32 tensors on ``device``, made once per device: building them from
    Python lists every frame is a blocking host-to-device copy on a GPU (it waits for the stream)."""
    import torch

    key = (str(device), tuple(spec.mean), tuple(spec.std))
    got = _STATS.get(key)
    if got is None:
        got = _STATS[key] = (torch.tensor(spec.mean, device=device).view(3, 1, 1),
                             torch.tensor(spec.std, device=device).view(3, 1, 1))
    return got


def to_model_input(frame: np.ndarray, spec: "InputSpec | int", device="cpu"):
    """Resize to ``spec.size`` square and normalize with ``spec``'s mean/std.

    ``frame``: (H, W, 3) uint8 RGB. Returns (3, S, S) float32 on ``device`` (contiguous). An int
    ``spec`` means SAM2's statistics at that size. The resize runs on the host for every device
    (:func:`resize_uint8`), so a frame's model input is the same on the CPU and on a GPU and a
    feature cache built on one serves the other; the upload is of S x S uint8 pixels.
    """
    import torch

    if not isinstance(spec, InputSpec):
        spec = InputSpec(int(spec))
    pin = torch.device(device).type == "cuda"  # an upload from pageable memory would wait for the whole GPU queue
    return normalize(resize_uint8(frame, spec.size, pin=pin), spec, device)
