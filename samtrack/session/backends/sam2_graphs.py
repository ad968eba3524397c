"""SAM2's tracking step replayed from CUDA graphs: no per-kernel launch overhead.

The step after the memory is assembled (memory attention, SAM heads, memory encoder) is a few
hundred small kernels; at 1024 px on a big GPU launching them costs about as much as running
them. A CUDA graph records them once for fixed shapes and replays them with one launch
(``torch.cuda.CUDAGraph``; https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).

Fixed shapes: the batch (objects), the image features' sizes, and the padded read set
(``sam2_padded``): memory frames padded to the batch's longest, object pointers to a multiple of
8, the padding masked out of attention. A shape is captured the second time it occurs (the
first frames of a propagation, whose read sets still grow, run eagerly), so one graph serves
every frame once a propagation is under way. Capture takes a few eager steps, not compiling:
the first mask is not delayed. At most ``max_graphs`` graphs are kept, and their static inputs
(the padded memory: ~15 MB per object at 1024 px) take at most ``max_static_bytes`` (least
recently used dropped; a shape whose inputs alone exceed it runs eagerly); the graphs'
temporaries share one memory pool.

Self-check: the first two replays of every new graph (the second on another frame's inputs)
are checked against the eager step on the same inputs, every output (mask logits, object
pointer, object score, memory), with the outputs set to NaN before the first replay, so a graph
that records nothing is caught too. A difference beyond bf16 rounding (or a capture that fails)
turns graphs off for the session, with a warning in the log, and the eager results are used.
The eager step and a replay run the same kernels on the same padded inputs.

On a machine without CUDA, ``GraphedTracker(..., capture=False)`` runs the same code with the
graph replaced by an eager call that writes into the same static outputs (tests check the
buffer handling on the CPU; only ``tests/test_gpu.py`` captures real graphs).
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import torch

from samtrack.session.backends import sam2_padded as pad

log = logging.getLogger(__name__)

POINTER_SLOTS_STEP = 8  # pointer slots are padded to a multiple of this (4 tokens each: cheap)
SELF_CHECKS = 2  # replays of each new graph compared with the eager step
# a replay vs the eager step, same kernels and inputs: |difference| <= abs + rel * max|eager|, per output
# (bf16 rounding is ~0.4 % relative; mask logits differed by up to 0.125 across batch sizes on an H100;
# mask logits get no relative term: "no object" pixels are -1024)
SELF_CHECK_TOL = {"object score": (0.5, 0.0), "IoU": (0.05, 0.0), "object pointer": (0.05, 0.02),
                  "mask logits": (0.5, 0.0), "memory": (0.05, 0.02)}


@dataclass
class _Graph:
    """One captured step: static inputs (features of one frame, padded memory) and outputs."""

    key: tuple
    sizes: list  # (H, W) per FPN level
    feats: list[torch.Tensor]  # per FPN level (HW_l, 1, C_l), copied in before each replay
    pos: list[torch.Tensor]  # position encodings of the features (constant for these sizes)
    mem: pad.PaddedMemory
    outputs: tuple | None = None  # (ious, low_res, obj_ptr, score, maskmem)
    graph: object = None
    checks_left: int = SELF_CHECKS
    uses: int = 0
    static_bytes: int = 0


class GraphedTracker:
    """Tracking steps of one :class:`~samtrack.session.backends.sam2_backend.Sam2Backend` through
    CUDA graphs keyed by (objects, memory slots, pointer slots, feature sizes).

    ``run`` returns upstream's SAM-head tuple plus the new memory, as fresh tensors the caller
    owns, or None when this shape runs eagerly (seen once, or graphs are off)."""

    def __init__(self, model, device: torch.device, autocast, *, capture: bool = True, max_graphs: int = 16,
                 max_static_bytes: int = 2 * 2**30):
        self.model = model
        self.device = device
        self.autocast = autocast  # a context-manager factory: bf16 autocast on CUDA (cache disabled)
        self.capture = capture
        self.max_graphs = max_graphs
        self.max_static_bytes = max_static_bytes
        self.enabled = True
        self.graphs: collections.OrderedDict[tuple, _Graph] = collections.OrderedDict()
        self.seen: collections.Counter = collections.Counter()
        self.stats = collections.Counter()  # captured, replayed, eager, dropped, self_checks
        self._pool = None
        if capture:
            with torch.cuda.device(device):
                self._pool = torch.cuda.graph_pool_handle()

    @staticmethod
    def slots(sets) -> tuple[int, int]:
        """(memory slots, pointer slots) for a batch: the longest read set, pointers rounded up."""
        m = max(len(s.memories) for s in sets)
        p = max(len(s.pointers) for s in sets)
        return m, -(-p // POINTER_SLOTS_STEP) * POINTER_SLOTS_STEP

    def run(self, vf: list, vp: list, sizes: list, sets, spatial_pos: torch.Tensor, n_frames: int):
        """One step for the objects ``sets`` on a frame whose features are ``vf`` ((HW_l, B', C_l)
        per level, any batch: the first row is read) and ``vp``. Returns (ious (B, K), low_res mask
        logits (B, 1, s, s), obj_ptr (B, C), object score logits (B, 1), maskmem (B, Cm, h, w)), or
        None: the caller runs the eager step."""
        if not self.enabled:
            return None
        slots = self.slots(sets)
        key = (len(sets), slots, tuple(tuple(s) for s in sizes), tuple(x.dtype for x in vf))
        with self._on_device():
            g = self.graphs.get(key)
            if g is None:
                self.seen[key] += 1
                if self.seen[key] < 2 or self._static_bytes(len(sets), vf, slots) > self.max_static_bytes:
                    self.stats["eager"] += 1
                    return None
                g = self._capture(key, vf, vp, sizes, sets, spatial_pos, n_frames, slots)
                if g is None:
                    return None
            self.graphs.move_to_end(key)
            self._fill(g, vf, sets, spatial_pos, n_frames, slots)
            self._replay(g)
            outs = tuple(t.clone() for t in g.outputs)
            g.uses += 1
            self.stats["replayed"] += 1
            if g.checks_left > 0:
                g.checks_left -= 1
                self.stats["self_checks"] += 1
                eager = self._body(g)
                why = mismatch(outs, eager)
                if why is not None:
                    self.disable(f"a replay differs from the eager step ({why})")
                    return tuple(eager)
        return outs

    def _on_device(self):
        """Capture, fill and replay on this tracker's device, whichever CUDA device is current (a
        capture records the current device's stream only)."""
        if self.capture:
            return torch.cuda.device(self.device)
        import contextlib

        return contextlib.nullcontext()

    def disable(self, why: str) -> None:
        """Turn graphs off for this session (eager steps from now on) and free them."""
        if self.enabled:
            log.warning("CUDA graphs off for this session: %s; tracking continues eagerly", why)
        self.enabled = False
        self.graphs.clear()

    # -- internals ---------------------------------------------------------------------
    def _body(self, g: _Graph):
        """The captured computation, on the static inputs."""
        sizes = g.sizes
        m = self.model
        b = g.mem.memory.shape[1]
        vf = [x.expand(-1, b, -1) for x in g.feats]
        vp = [x.expand(-1, b, -1) for x in g.pos]
        with self.autocast():
            sam = pad.track_heads(m, vf, vp, sizes, g.mem)
            _, _, ious, low_res, high_res, obj_ptr, score = sam
            maskmem, _ = m._encode_new_memory(vf, sizes, high_res, score, is_mask_from_pts=False)
        return ious, low_res, obj_ptr, score, maskmem

    def _fill(self, g: _Graph, vf, sets, spatial_pos, n_frames, slots) -> None:
        for dst, src in zip(g.feats, vf):
            dst.copy_(src[:, :1], non_blocking=True)
        pad.assemble(self.model, sets, spatial_pos, n_frames, self.device, slots=slots, out=g.mem)

    def _replay(self, g: _Graph) -> None:
        if g.graph is not None:
            g.graph.replay()
        else:  # no CUDA: the same static buffers, an eager call in place of the replay
            for dst, src in zip(g.outputs, self._body(g)):
                dst.copy_(src)

    def _capture(self, key, vf, vp, sizes, sets, spatial_pos, n_frames, slots) -> _Graph | None:
        feats = [torch.empty_like(x[:, :1]).copy_(x[:, :1]) for x in vf]
        pos = [x[:, :1].contiguous() for x in vp]
        mem = pad.assemble(self.model, sets, spatial_pos, n_frames, self.device, slots=slots)
        g = _Graph(key, list(sizes), feats, pos, mem, static_bytes=self._static_bytes(len(sets), vf, slots))
        try:
            if not self.capture:
                g.outputs = tuple(torch.full_like(t, float("nan")) for t in self._body(g))
            else:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up: lazy initialisation happens outside the capture
                        self._body(g)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # thread_local: the input-prefetch and flush threads may call CUDA during a capture
                with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                    g.outputs = self._body(g)
                g.graph = graph
                for t in g.outputs:  # a replay that writes nothing fails the self-check
                    t.fill_(float("nan"))
        except Exception as e:  # noqa: BLE001  (any capture failure: eager steps are always correct)
            self.disable(f"capturing the tracking step failed ({type(e).__name__}: {e})")
            return None
        self.graphs[key] = g
        self.stats["captured"] += 1
        while len(self.graphs) > self.max_graphs or (
                len(self.graphs) > 1 and sum(x.static_bytes for x in self.graphs.values()) > self.max_static_bytes):
            self.graphs.popitem(last=False)
            self.stats["dropped"] += 1
        return g

    def _static_bytes(self, batch: int, vf: list, slots: tuple[int, int]) -> int:
        """Bytes of a graph's static inputs for this shape: memory and its position encoding (float32)
        and the key mask, per object, plus one frame's features."""
        m = self.model
        hw = vf[-1].shape[0]
        k = m.hidden_dim // m.mem_dim if m.mem_dim < m.hidden_dim else 1
        keys = slots[0] * hw + slots[1] * k
        return batch * keys * (2 * 4 * int(m.mem_dim) + 1) + sum(x[:, :1].numel() * x.element_size() for x in vf)


def mismatch(replayed: tuple, eager: tuple) -> str | None:
    """Why a replay's outputs (ious, low_res, obj_ptr, score, maskmem) are not the eager step's
    within bf16 rounding, or None. An object whose score is near 0 on both sides may flip presence
    (its mask then reads "no object", -1024): such objects' masks and memories are not compared."""
    ious, low, ptr, score, mem = (t.float() for t in replayed)
    e_ious, e_low, e_ptr, e_score, e_mem = (t.float() for t in eager)

    def off(name, a, b):
        if not a.numel():
            return None
        tol_abs, tol_rel = SELF_CHECK_TOL[name]
        d = float((a - b).abs().max())  # NaN (a replay that wrote nothing) fails the comparison below
        return None if d <= tol_abs + tol_rel * float(b.abs().max()) else d

    flip = ((score > 0) != (e_score > 0)).reshape(-1)
    near_zero = torch.maximum(score.abs(), e_score.abs()).reshape(-1) <= SELF_CHECK_TOL["object score"][0]
    if bool((flip & ~near_zero).any()) or bool(score.isnan().any()):
        return "object presence differs"
    keep = ~flip
    for name, a, b in (("object score", score, e_score), ("IoU", ious, e_ious), ("object pointer", ptr, e_ptr),
                       ("mask logits", low[keep], e_low[keep]), ("memory", mem[keep], e_mem[keep])):
        d = off(name, a, b)
        if d is not None:
            return f"{name} by {d:.3g}"
    return None
