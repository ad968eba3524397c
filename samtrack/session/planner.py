"""Which frames a propagation computes, and which results a new prompt makes stale.

Rules (documented in the README):
- a pass starts at a keyframe and moves away from it, one frame at a time, and
  ends at the object's next keyframe in that direction (or the range's end);
- every computed frame records its *source* keyframe;
- between two keyframes, a frame's result comes from the preferred keyframe's
  pass: ``nearer`` (default; ties go to the earlier keyframe), ``forward``
  (the earlier keyframe) or ``backward`` (the later one). A pass leaves frames
  that another pass of the same call will own, and covers them otherwise;
- a new, changed or removed prompt on frame c makes stale every frame whose
  pass started at c or crossed c; only those, and frames a nearer keyframe
  now owns, are recomputed.
"""
from __future__ import annotations

import bisect
from enum import Enum

import numpy as np

from samtrack.errors import InvalidOptionError
from samtrack.io.result_store import Status

RULES = ("nearer", "forward", "backward")


class Action(Enum):
    COMPUTE = 1
    SKIP = 2  # already computed by this pass's keyframe: keep, move on
    STOP = 3


def neighbours(keyframes: list[int], f: int) -> tuple[int | None, int | None]:
    i = bisect.bisect_left(keyframes, f)
    prev_k = keyframes[i - 1] if i > 0 else None
    j = bisect.bisect_right(keyframes, f)
    next_k = keyframes[j] if j < len(keyframes) else None
    return prev_k, next_k


def preferred(f: int, prev_k: int | None, next_k: int | None, rule: str) -> int | None:
    if prev_k is None or next_k is None:
        return prev_k if next_k is None else next_k
    if rule == "forward":
        return prev_k
    if rule == "backward":
        return next_k
    if rule != "nearer":
        raise InvalidOptionError(f"overlap rule {rule!r}: use one of {RULES}")
    return prev_k if f - prev_k <= next_k - f else next_k


def decide(f: int, k: int, *, keyframes: list[int], status: np.ndarray, sources: np.ndarray, rule: str,
           directions: set[str]) -> Action:
    """What the pass from keyframe ``k`` does at frame ``f``."""
    prev_k, next_k = neighbours(keyframes, f)
    pref = preferred(f, prev_k, next_k, rule)
    st, src = int(status[f]), int(sources[f])
    if st == Status.PROPAGATED:
        if src == k:
            return Action.SKIP
        return Action.COMPUTE if pref == k and src != pref else Action.STOP
    if pref == k or pref is None:
        return Action.COMPUTE
    pref_dir = "forward" if pref < f else "backward"
    return Action.STOP if pref_dir in directions else Action.COMPUTE


def stale_frames(c: int, status: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Frames made stale by a prompt change on frame ``c``: sourced at c, or whose pass crossed c."""
    idx = np.arange(len(status))
    valid = status == Status.PROPAGATED
    src = sources
    crossed = ((src < c) & (c < idx)) | ((idx < c) & (c < src))
    return np.flatnonzero(valid & ((src == c) | crossed))
