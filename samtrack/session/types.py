"""Plain types of the session API: options, per-frame results, keyframe selection."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samtrack.errors import InvalidOptionError
from samtrack.session.planner import RULES


@dataclass(frozen=True)
class SessionConfig:
    """Tracking options. ``max_keyframes_in_attention``: nearest keyframes each
    step reads (upstream reads all; capping keeps the cost bounded however many
    corrections are made). ``overlap_rule``: who owns frames between two
    keyframes (nearer / forward / backward). ``host_budget_bytes``: RAM for the
    memory bank's host tier. ``feature_cache_frames``: image embeddings kept
    in RAM (prompting the same frame again does not re-encode it).
    ``feature_store``: keep every frame's image features on disk in the
    workdir (``features.zarr``), so that re-propagation after a correction,
    prompting a revisited frame and a reopened job never run the image
    encoder on a frame twice; ``feature_disk_budget_bytes`` caps it (least
    recently used shards are removed; None: no cap). Stored in the dtype the
    encoder produced (exact). ``pad_read_sets``: track all objects of a frame
    in one batch, padding the memory read sets of objects that read fewer or
    other frames (one launch per frame); False: one batch per read-set shape
    (no padding computed); None (default): pad on CUDA, not on the CPU, where
    padding costs compute and launches cost little. Families that cannot pad
    (SAM3) batch objects reading the same frames either way. ``cuda_graphs``:
    replay the tracking step from CUDA graphs (SAM2 family; the first two
    replays of each new graph are checked against the eager step, and graphs
    turn off for the session if one differs); None (default): on CUDA; True
    on another device raises InvalidOptionError. Both change how, not what,
    is computed (logits within float / bf16 rounding): not part of the job."""

    max_keyframes_in_attention: int | None = 8
    overlap_rule: str = "nearer"
    host_budget_bytes: int = 2 * 2**30
    feature_cache_frames: int = 8
    feature_store: bool = True
    feature_disk_budget_bytes: int | None = 20 * 2**30
    pad_read_sets: bool | None = None
    cuda_graphs: bool | None = None

    def __post_init__(self):
        if self.overlap_rule not in RULES:
            raise InvalidOptionError(f"overlap_rule={self.overlap_rule!r}: use one of {RULES}")
        if self.max_keyframes_in_attention is not None and self.max_keyframes_in_attention < 2:
            raise InvalidOptionError("max_keyframes_in_attention must be at least 2 (or None for all)")
        for name, unit, optional in (("host_budget_bytes", "bytes", False), ("feature_cache_frames", "frames", False),
                                     ("feature_disk_budget_bytes", "bytes", True)):
            v = getattr(self, name)
            if (v is None and not optional) or (v is not None and (
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0)):
                raise InvalidOptionError(f"{name}={v!r}: give a whole number of {unit}, 0 or more"
                                         + (" (null: no cap)" if optional else ""))


@dataclass
class FrameResult:
    """One video frame's results for ``obj_ids`` (in that order). Video pixel grid, row-major (H, W).
    The arrays are the caller's: no store keeps them (the result store encoded its own copy of each
    mask), so they may be modified; ``masks`` is ``logits > 0`` except where a mask prompt on this
    frame gives the mask exactly."""

    frame_idx: int
    obj_ids: list[int]
    masks: np.ndarray  # (n, H, W) bool
    logits: np.ndarray  # (n, H, W) float32
    object_scores: np.ndarray  # (n,) object-presence logit (> 0: present)
    ious: np.ndarray  # (n,) predicted IoU


def _closest(f: int, keys: list[int], cap: int | None) -> list[int]:
    """Upstream's choice of conditioning frames (closest before, closest after, then nearest)."""
    if cap is None or len(keys) <= cap:
        return list(keys)
    sel = []
    before = [t for t in keys if t < f]
    after = [t for t in keys if t >= f]
    if before:
        sel.append(before[-1])
    if after:
        sel.append(after[0])
    rest = sorted((t for t in keys if t not in sel), key=lambda t: abs(t - f))[: cap - len(sel)]
    return sorted(sel + rest)
