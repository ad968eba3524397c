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

import numpy as np

from samtrack.io.model_input import InputSpec
from samtrack.session.backends.base import DetectRequest, Detection, FrameFeatures, MemoryView, StepOutput, TrackRequest
from samtrack.session.models import get_model

FAMILY = "fake"


def recognise(sd: dict) -> str | None:
    """A fake backend has no checkpoints."""
    return None


def load(spec, checkpoint, *, image_size: int | None = None, device: str = "auto", **kw) -> "FakeBackend":
    """The registry's entry point (``checkpoint`` is ignored: outputs are precomputed)."""
    from samtrack.session.devices import pick_device

    return FakeBackend(image_size or 1024, device=str(pick_device(device)))


class FakeBackend:
    """Precomputed outputs of SAM2.1 tiny's shapes; ``calls`` counts what the session asked for."""

    family = FAMILY
    num_maskmem = 7
    max_obj_ptrs = 16
    stride = 1
    no_object_logit = -1024.0
    object_queries = frozenset({"concept", "everything"})

    def __init__(self, image_size: int = 1024, device: str = "cpu", *, sam2_sized_features: bool = False):
        """``sam2_sized_features``: the rows handed to the feature store have SAM2's shapes and dtype
        under CUDA autocast (FPN levels (32, S/4, S/4), (64, S/8, S/8), (256, S/16, S/16) bfloat16,
        8 MB per frame at 1024 px), so a benchmark pays what storing real features costs; default one
        tiny row per frame."""
        self.sam2_sized_features = bool(sam2_sized_features)
        self._fpn: dict[str, torch.Tensor] | None = None
        self.spec = dataclasses.replace(get_model("sam2.1_hiera_tiny"), name="fake")
        self.checkpoint = None
        self.image_size = int(image_size)
        self.input_spec = InputSpec(self.image_size)
        self.low_res_size = self.image_size // 4
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

    def map_points(self, points: np.ndarray, width: int, height: int) -> torch.Tensor:
        """(N, 2) video pixels -> model pixels (x / W * S, y / H * S)."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32).reshape(-1, 2))
        return pts / torch.tensor([width, height], dtype=torch.float32) * self.image_size

    def encode_image(self, image: torch.Tensor, frame_idx: int) -> FrameFeatures:
        self.calls["encode_image"][frame_idx] += 1
        return FrameFeatures(frame_idx, None)

    def features_to_store(self, feats: FrameFeatures) -> dict[str, torch.Tensor]:
        """One tiny row per frame, so the feature store's round trip runs (the frame index, float32);
        with ``sam2_sized_features`` SAM2's three FPN levels (random bfloat16: real features compress
        about as little), made once: the same tensors every frame (the store copies nothing from them
        and compresses them like any other)."""
        if not self.sam2_sized_features:
            return {"frame": torch.tensor([float(feats.frame_idx)])}
        if self._fpn is None:
            S, g = self.image_size, torch.Generator().manual_seed(0)
            self._fpn = {f"fpn{i}": torch.randn(c, S // d, S // d, generator=g).to(torch.bfloat16)
                         for i, (c, d) in enumerate(((32, 4), (64, 8), (256, 16)))}
        return dict(self._fpn)

    def features_from_store(self, rows: dict[str, torch.Tensor], frame_idx: int) -> FrameFeatures:
        return FrameFeatures(frame_idx, None)

    def detect(self, frame: np.ndarray, feats: FrameFeatures | None, request: DetectRequest) -> list[Detection]:
        """Objects for any object-creating prompt: one rectangle per ``request.options["squares"]`` entry
        ((x0, y0, x1, y1) video pixels, score 0.9), so tests choose what is "found"."""
        self.calls.setdefault("detect", collections.Counter())[feats.frame_idx if feats else -1] += 1
        h, w = frame.shape[:2]
        out = []
        for x0, y0, x1, y1 in request.options.get("squares", ()):
            m = np.zeros((h, w), bool)
            m[int(y0):int(y1), int(x0):int(x1)] = True
            if m.any():
                out.append(Detection(m, (float(x0), float(y0), float(x1), float(y1)), 0.9))
        return [d for d in out if d.score >= request.threshold]

    def frames_read(self, frame_idx: int, reverse: bool, cond_frames: Sequence[int], n_frames: int,
                    history=None) -> list[int]:
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
        """(B, H, W): the disc upsampled once per batch size and video size, then the same tensor every call
        (a cost-free model allocates nothing either). The one backend whose results' ``logits`` are shared:
        never modify them in place."""
        key = (logits.shape[0], height, width)
        if key not in self._video:
            self._video[key] = F.interpolate(self._logits, size=(height, width), mode="bilinear",
                                             align_corners=False)[:, 0].expand(logits.shape[0], -1, -1).contiguous()
        return self._video[key]
