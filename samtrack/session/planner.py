"""Which frames a propagation computes, and which results a new prompt makes stale.

Rules (documented in the README):
- a pass starts at a keyframe and moves away from it, one frame at a time, and
  ends at the object's next keyframe in that direction (or the range's end);
- every computed frame records its *source* keyframe;
- between two keyframes, a frame's result comes from the preferred keyframe's
  pass: ``nearer`` (default; ties go to the earlier keyframe), ``forward``
  (the earlier keyframe) or ``backward`` (the later one). A pass leaves frames
  that another pass of the same call will own, and covers them otherwise;
- a range ``start..stop`` whose frames need a keyframe outside it (a backward
  pass over 0..2 when the object's keyframe is 5) starts at that keyframe: the
  frames between it and the range are computed (and stored) on the way;
- a new, changed or removed prompt on frame c makes stale every frame whose
  pass started at c or crossed c, and every frame that another keyframe now
  owns; exactly those are recomputed by the next full propagation
  (:func:`frames_to_recompute`).

The whole call is planned before any model runs (:func:`plan_propagation`), so
the session knows how many video frames it will finish, yields each frame once
(after its last object is computed), and can say when nothing can be reached.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from samtrack.errors import InvalidOptionError
from samtrack.io.result_store import Status

RULES = ("nearer", "forward", "backward")
DIRECTIONS = ("forward", "backward", "both")


class Action(Enum):
    COMPUTE = 1
    SKIP = 2  # already computed by this pass's keyframe: keep, move on
    STOP = 3


def neighbours(keyframes: list[int], f: int) -> tuple[int | None, int | None]:
    """The nearest keyframe strictly before ``f`` and strictly after ``f`` (None when there is none)."""
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
    """Frames whose pass started at or crossed frame ``c`` (their memory read what ``c`` was)."""
    idx = np.arange(len(status))
    valid = status == Status.PROPAGATED
    src = sources
    crossed = ((src < c) & (c < idx)) | ((idx < c) & (c < src))
    return np.flatnonzero(valid & ((src == c) | crossed))


@dataclass
class Track:
    """One object as the planner sees it. ``status`` and ``sources`` are copies: planning
    writes into them what the planned passes will compute."""

    keyframes: list[int]
    status: np.ndarray  # (N,) uint8 Status per frame
    sources: np.ndarray  # (N,) int32 keyframe whose pass produced the frame, -1 none

    def __post_init__(self):
        self.keyframes = sorted(self.keyframes)
        self._keys = set(self.keyframes)

    def is_key(self, f: int) -> bool:
        return f in self._keys


@dataclass(frozen=True)
class Step:
    """One frame of a sweep: objects whose pass starts here (their keyframe) and objects computed
    here, each with the keyframe whose pass computes it."""

    frame: int
    started: tuple[int, ...]
    compute: tuple[tuple[int, int], ...]  # (object id, source keyframe)


@dataclass
class Plan:
    """A whole propagation call: sweeps in order, and when each video frame is finished.

    ``yields[(sweep index, frame)]``: the objects to report for ``frame`` once that step of that
    sweep is stored (the frame's last step in the call, in the requested range). ``unreachable``:
    {object: frames of the range that need computing but no pass of this call reaches}."""

    sweeps: list[tuple[str, list[Step]]]
    yields: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)
    unreachable: dict[int, list[int]] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """How many video frames this call finishes (what a progress bar counts)."""
        return len(self.yields)

    @property
    def n_computed(self) -> int:
        return sum(len(s.compute) for _, steps in self.sweeps for s in steps)


def _resume_point(t: Track, f0: int, rev: bool) -> int | None:
    """Keyframe whose pass reached the frame just before ``f0`` (so it can go on from there)."""
    prev = f0 + 1 if rev else f0 - 1
    if not 0 <= prev < len(t.status):
        return None
    if t.is_key(prev):
        return prev
    return int(t.sources[prev]) if t.status[prev] == Status.PROPAGATED and t.sources[prev] >= 0 else None


def plan_sweep(direction: str, lo: int, hi: int, tracks: dict[int, Track], *, rule: str,
               dirs: set[str]) -> list[Step]:
    """The steps of one sweep over ``lo..hi`` (extended to keyframes outside it where the range needs
    them). Writes the planned results into the tracks' status and sources."""
    rev = direction == "backward"
    f0 = hi if rev else lo
    begin: dict[int, int] = {}  # object -> first frame of this sweep where it takes part
    active: dict[int, int | None] = {}
    for oid, t in tracks.items():
        if t.is_key(f0):
            begin[oid] = f0
        elif (k := _resume_point(t, f0, rev)) is not None:
            begin[oid], active[oid] = f0, k
        else:  # the range needs a pass that starts outside it, at the nearest keyframe behind it
            prev_k, next_k = neighbours(t.keyframes, f0)
            k = next_k if rev else prev_k
            begin[oid] = f0 if k is None else k  # without one, passes start at keyframes inside the range
    if not begin:
        return []
    step = -1 if rev else 1
    f = max(begin.values()) if rev else min(begin.values())
    end = lo - 1 if rev else hi + 1
    steps: list[Step] = []
    while f != end:
        started, compute = [], []
        for oid, t in tracks.items():
            b = begin[oid]
            if f > b if rev else f < b:
                continue
            if t.is_key(f):
                active[oid] = f
                started.append(oid)
                continue
            k = active.get(oid)
            if k is None:
                continue
            act = decide(f, k, keyframes=t.keyframes, status=t.status, sources=t.sources, rule=rule, directions=dirs)
            if act is Action.STOP:
                active[oid] = None
            elif act is Action.COMPUTE:
                compute.append((oid, k))
                t.status[f], t.sources[f] = Status.PROPAGATED, k
        if started or compute:
            steps.append(Step(f, tuple(started), tuple(compute)))
        f = _next_frame(f, step, end, tracks, begin, active)
    return steps


def _next_frame(f: int, step: int, end: int, tracks: dict[int, Track], begin: dict, active: dict) -> int:
    """The next frame of a sweep; when no pass is active, jump to the next keyframe or object start."""
    nxt = f + step
    if any(k is not None for k in active.values()):
        return nxt
    cands = [b for b in begin.values() if (b - nxt) * step >= 0]
    for t in tracks.values():
        i = bisect.bisect_left(t.keyframes, nxt) if step > 0 else bisect.bisect_right(t.keyframes, nxt) - 1
        if 0 <= i < len(t.keyframes):
            cands.append(t.keyframes[i])
    if not cands:
        return end
    j = min(cands) if step > 0 else max(cands)
    return j if (end - j) * step > 0 else end


def plan_propagation(direction: str, lo: int, hi: int, tracks: dict[int, Track], *, rule: str) -> Plan:
    """Plan ``propagate(direction, lo, hi)`` for ``tracks`` (written into, as the call will)."""
    if direction not in DIRECTIONS:
        raise InvalidOptionError(f"direction={direction!r}: use forward, backward or both")
    dirs = {"forward", "backward"} if direction == "both" else {direction}
    order = [d for d in ("forward", "backward") if d in dirs]
    sweeps = [(d, plan_sweep(d, lo, hi, tracks, rule=rule, dirs=dirs)) for d in order]
    plan = Plan(sweeps)
    last: dict[int, tuple[int, set[int]]] = {}  # frame -> (sweep of its last step, objects to report)
    for si, (_, steps) in enumerate(sweeps):
        sources = {k for s in steps for _, k in s.compute}  # keyframes whose pass computes something
        for s in steps:
            if not lo <= s.frame <= hi:
                continue
            ids = {oid for oid, _ in s.compute} | {oid for oid in s.started if s.frame in sources}
            if ids:
                prev = last.get(s.frame, (si, set()))[1]
                last[s.frame] = (si, prev | ids)
    plan.yields = {(si, f): tuple(sorted(ids)) for f, (si, ids) in last.items()}
    for oid, t in tracks.items():
        st = t.status[lo:hi + 1]
        need = np.flatnonzero((st == Status.NOT_RUN) | (st == Status.STALE)) + lo
        need = [int(f) for f in need if not t.is_key(int(f))]
        if need:
            plan.unreachable[oid] = need
    return plan


def frames_to_recompute(track: Track, c: int, *, rule: str) -> np.ndarray:
    """Frames computed now (PROPAGATED) that a propagation in both directions would compute again
    after a keyframe change on frame ``c``: ownership changes only between ``c``'s neighbouring
    keyframes, so only that span is planned (the cost does not grow with the video's length)."""
    before = track.status.copy()
    prev_k, next_k = neighbours(track.keyframes, c)
    lo, hi = (0 if prev_k is None else prev_k), (len(before) - 1 if next_k is None else next_k)
    t = Track(track.keyframes, track.status.copy(), track.sources.copy())
    plan = plan_propagation("both", lo, hi, {0: t}, rule=rule)
    done = {s.frame for _, steps in plan.sweeps for s in steps if s.compute}
    return np.array(sorted(f for f in done if before[f] == Status.PROPAGATED), dtype=int)

