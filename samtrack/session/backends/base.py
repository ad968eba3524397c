"""What the session needs from a model family (SAM2/SAM2.1 now, SAM3's tracker next).

The session speaks in frames, objects and :class:`MemoryEntry` records; how
a family turns them into its own state is the adapter's business.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch


@dataclass
class FrameFeatures:
    """Image-encoder output of one frame (batch 1); ``data`` is adapter-private."""

    frame_idx: int
    data: Any


@dataclass
class MemoryEntry:
    """One object's state on one frame: everything later frames may read.

    ``mask_logits`` (1, s, s) float32 at the model's low resolution (s = S/4) is
    the output; ``mem_logits`` the logits the memory was encoded from when they
    differ (hole filling); ``maskmem`` the encoded memory (None when paged out:
    re-encoded from the frame's features and ``mem_logits or mask_logits``).
    """

    obj_ptr: torch.Tensor  # (C,)
    object_score: torch.Tensor  # (1,)
    mask_logits: torch.Tensor  # (1, s, s)
    iou: float
    from_prompt: bool  # memory from a prompt (binarized) or from tracking (sigmoid)
    reverse: bool  # direction of the pass that made it
    keyframe: bool = False
    maskmem: torch.Tensor | None = None  # (Cm, h, w), storage dtype (bf16 like upstream)
    mem_logits: torch.Tensor | None = None
    pending: bool = False  # a prompt whose memory is not encoded yet (before propagation)

    def nbytes(self) -> int:
        ts = [self.obj_ptr, self.object_score, self.mask_logits, self.maskmem, self.mem_logits]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


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
