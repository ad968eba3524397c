"""A backend that costs nothing: every output is precomputed once, with SAM2.1's shapes at the
chosen image size. It runs the session loop, the memory bank and the stores as a real model would,
so ``bench/pipeline_overhead.py`` can measure the host work around the model (frame reads, resizes,
bookkeeping, result and memory writes) on a machine without a GPU; tests use it where the model's
values do not matter.

Shapes (S = image size, s = S/4, C = 256 pointer width, Cm = 64 memory channels, h = S/16):
mask logits (B, 1, s, s) float32 (a centred disc, positive inside), object pointers (B, C),
object scores (B, 1) = 8.0 (present), memory (Cm, h, h) bfloat16.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from samtrack.session.backends.base import FrameFeatures, MemoryView, StepOutput, TrackRequest
from samtrack.session.models import get_model


class FakeBackend:
    """Precomputed outputs of SAM2.1 tiny's shapes; ``calls`` counts what the session asked for."""

    num_maskmem = 7
    max_obj_ptrs = 16
    stride = 1

    def __init__(self, image_size: int = 1024, device: str = "cpu"):
        self.spec = dataclasses.replace(get_model("sam2.1_hiera_tiny"), name="fake")
        self.checkpoint = None
        self.image_size = int(image_size)
        self.device = torch.device(device)
        s, h = self.image_size // 4, self.image_size // 16
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        disc = ((yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (s / 5) ** 2).float() * 20 - 10
        self._logits = disc[None, None].to(self.device)  # (1, 1, s, s)
        self._ptr = torch.zeros(1, 256, device=self.device)
        self._score = torch.full((1, 1), 8.0, device=self.device)
        self._maskmem = torch.zeros(64, h, h, dtype=torch.bfloat16, device=self.device)
        self._video: dict[tuple, torch.Tensor] = {}
        self.calls: dict = {k: collections.Counter() for k in ("encode_image", "track", "prompt", "encode_memory")}

    def encode_image(self, image: torch.Tensor, frame_idx: int) -> FrameFeatures:
        self.calls["encode_image"][frame_idx] += 1
        return FrameFeatures(frame_idx, None)

    def frames_read(self, frame_idx: int, reverse: bool, cond_frames: Sequence[int], n_frames: int) -> list[int]:
        """SAM2's read set (stride 1): the 6 previous frames' memory and 15 previous pointers."""
        step = 1 if reverse else -1
        out = [frame_idx + step * d for d in range(1, self.max_obj_ptrs)]
        return sorted(t for t in out if 0 <= t < n_frames)

    def _out(self, b: int) -> StepOutput:
        logits = self._logits.expand(b, -1, -1, -1)
        return StepOutput(mask_logits=logits, mem_logits=logits, obj_ptr=self._ptr.expand(b, -1),
                          object_score=self._score.expand(b, -1), iou=torch.ones(b, device=self.device),
                          maskmem=self._maskmem[None].expand(b, -1, -1, -1))

    def track(self, feats: FrameFeatures, req: TrackRequest, n_frames: int) -> StepOutput:
        self.calls["track"][req.frame_idx] += len(req.views)
        return self._out(len(req.views))

    def prompt(self, feats: FrameFeatures, frame_idx: int, view: MemoryView | None, *, points=None, labels=None,
               mask=None, prev_logits=None, reverse: bool = False, n_frames: int) -> StepOutput:
        self.calls["prompt"][frame_idx] += 1
        out = self._out(1)
        out.maskmem = None
        return out

    def encode_memory(self, feats: FrameFeatures, logits: torch.Tensor, object_score: torch.Tensor,
                      from_prompt: bool) -> torch.Tensor:
        self.calls["encode_memory"][feats.frame_idx] += 1
        return self._maskmem

    def to_video_res(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, H, W): the disc upsampled once per batch size and video size, then reused."""
        key = (logits.shape[0], height, width)
        if key not in self._video:
            self._video[key] = F.interpolate(self._logits, size=(height, width), mode="bilinear",
                                             align_corners=False)[:, 0].expand(logits.shape[0], -1, -1).contiguous()
        return self._video[key]
