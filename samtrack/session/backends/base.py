"""What the session needs from a model family (SAM2/SAM2.1 now, SAM3's tracker next).

The session speaks in frames, objects and :class:`MemoryEntry` records; how
a family turns them into its own state is the adapter's business.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch

from samtrack.memory.entry import MemoryEntry  # noqa: F401  (the record the session and the bank share)


@dataclass
class FrameFeatures:
    """Image-encoder output of one frame (batch 1); ``data`` is adapter-private."""

    frame_idx: int
    data: Any


@dataclass
class MemoryView:
    """The frames one object's attention may read for one step."""

    cond: dict[int, MemoryEntry]  # keyframes (already capped to the nearest N)
    other: Mapping[int, MemoryEntry]  # any other frame by index (.get)


@dataclass
class TrackRequest:
    frame_idx: int
    reverse: bool
    views: Sequence[MemoryView]  # one per object, in batch order


@dataclass
class StepOutput:
    """Per-object results of one frame, batch-first."""

    mask_logits: torch.Tensor  # (B, 1, s, s) low-res output (after post-processing)
    mem_logits: torch.Tensor  # (B, 1, s, s) what memory is encoded from
    obj_ptr: torch.Tensor  # (B, C)
    object_score: torch.Tensor  # (B, 1)
    iou: torch.Tensor  # (B,)
    maskmem: torch.Tensor | None  # (B, Cm, h, w) or None
    entries: list[MemoryEntry] = field(default_factory=list)


class Backend(Protocol):
    image_size: int
    num_maskmem: int
    max_obj_ptrs: int
    device: torch.device
    calls: dict

    def encode_image(self, image: torch.Tensor, frame_idx: int) -> FrameFeatures: ...

    def frames_read(self, frame_idx: int, reverse: bool, cond_frames: Sequence[int], n_frames: int) -> list[int]: ...

    def track(self, feats: FrameFeatures, req: TrackRequest, n_frames: int) -> StepOutput: ...

    def prompt(self, feats: FrameFeatures, frame_idx: int, view: MemoryView | None, *, points=None, labels=None,
               mask=None, prev_logits=None, reverse: bool = False, n_frames: int) -> StepOutput: ...

    def encode_memory(self, feats: FrameFeatures, logits: torch.Tensor, object_score: torch.Tensor,
                      from_prompt: bool) -> torch.Tensor: ...

    def to_video_res(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor: ...
