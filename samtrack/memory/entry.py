"""The per-object, per-frame memory record that the bank pages between tiers."""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
