"""The frame in flight during propagation: its results are copied to the host while the next
frame computes, then stored (see TrackingSession._sweep)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from samtrack.io.result_store import Status
from samtrack.memory.entry import MemoryEntry

if TYPE_CHECKING:
    from samtrack.session.session import TrackingSession


def to_host(tensors: dict):
    """Start copies of ``tensors`` to host memory; returns (host tensors, CUDA event or None). A dense
    tensor keeps its memory layout (channels-last image features stay channels-last: the feature store
    gives rows back in the layout they were put in, and kernels round differently on other layouts)."""
    first = next(v for v in tensors.values() if v is not None)
    if first.device.type != "cuda":
        return {k: (v.detach().cpu() if v is not None else None) for k, v in tensors.items()}, None
    host = {}
    for k, v in tensors.items():
        if v is not None:
            dense = v.is_contiguous() or (v.dim() == 4 and v.is_contiguous(memory_format=torch.channels_last)) \
                or (v.dim() == 3 and v.permute(1, 2, 0).is_contiguous())  # a (C, H, W) channels-last row
            host[k] = (torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, pin_memory=True) if dense
                       else torch.empty(v.shape, dtype=v.dtype, pin_memory=True))
            host[k].copy_(v.detach(), non_blocking=True)
        else:
            host[k] = None
    event = torch.cuda.Event()
    event.record()
    return host, event


@dataclass
class Launched:
    """A tracked frame whose results are still being copied to the host."""

    frame: int
    obj_ids: list = field(default_factory=list)
    parts: list = field(default_factory=list)  # per batch: ([(obj_id, entry, source)], host tensors, event)

    def store(self, session: TrackingSession) -> None:
        for entries, host, event in self.parts:
            if event is not None:
                event.synchronize()  # this frame's copies only; the next frame keeps computing
            video = host["video"].numpy()
            masks = video > 0  # the batch's masks at once
            for i, (oid, e, source) in enumerate(entries):
                e.iou = float(host["iou"][i])
                he = MemoryEntry(obj_ptr=host["ptr"][i], object_score=host["score"][i], mask_logits=host["logits"][i],
                                 iou=e.iou, from_prompt=False, reverse=e.reverse,
                                 mem_logits=None if host["mem"] is None else host["mem"][i])
                session.bank.persist(oid, self.frame, he)
                session._store(self.frame, oid, video, he, Status.PROPAGATED, source=source, row=i, masks=masks)
