"""The graph-replayed tracking step's buffer handling, on the CPU.

``GraphedTracker(capture=False)`` runs the code a CUDA graph runs (static inputs filled in place,
outputs written into the same static tensors on every "replay"), with an eager call in place of
the replay, so what can go wrong around a graph (a stale input, an output handed out and then
overwritten by the next replay, a padded shape that reads the wrong slot) shows here as logits
that differ from the plain eager step. Real capture is checked by tests/test_gpu.py."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import samtrack
from samtrack.errors import InvalidOptionError
from samtrack.session import SessionConfig
from samtrack.session.backends.sam2_graphs import GraphedTracker
from tests import media
from tests import model_utils as mu

N = 22
OBJECTS = {1: (0, [[40, 60]]), 2: (3, [[100, 40]]), 3: (8, [[120, 90]])}  # object: (keyframe, click)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graphs")
    return tmp, mu.make_checkpoint(tmp / "ck.pt"), media.write_video(tmp / "v.mp4", N, w=160, h=120)


def _run(clip, name, *, graphs: bool, corrupt: str | None = None, budget: int = 2 * 2**30):
    tmp, ck, vid = clip
    s = samtrack.open_session(vid, checkpoint=ck, image_size=mu.IMAGE_SIZE, device="cpu", workdir=tmp / name,
                              config=SessionConfig(pad_read_sets=True))
    tracker = None
    if graphs:
        tracker = s.backend._graphs = GraphedTracker(s.backend.model, s.backend.device, s.backend._graph_ctx,
                                                     capture=False, max_static_bytes=budget)
        replay = tracker._replay

        def bad(g):
            if corrupt == "wrong":  # a graph whose replay computes something else than the eager step
                replay(g)
                g.outputs[1].add_(3.0)
            # "nothing": a graph that recorded nothing (its outputs keep what they held)

        if corrupt:
            tracker._replay = bad
    out = {}
    for oid, (f, pts) in OBJECTS.items():
        out[(oid, f)] = s.add_points(f, oid, pts, [1]).logits[0]
    for r in s.propagate("forward"):
        for k, oid in enumerate(r.obj_ids):
            out[(oid, r.frame_idx)] = r.logits[k]
    s.close()
    return out, tracker


@pytest.fixture(scope="module")
def eager(clip):
    return _run(clip, "eager", graphs=False)[0]


def _worst(a: dict, b: dict) -> float:
    assert set(a) == set(b) and len(a) == N + (N - 3) + (N - 8)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_replayed_steps_equal_eager_steps(clip, eager):
    """Objects join on frames 0, 3 and 8, so the batch and the read-set slots grow before they settle:
    each shape runs eagerly the first time, is captured the second and replayed after that."""
    graphed, tracker = _run(clip, "graphed", graphs=True)
    assert tracker.enabled
    assert tracker.stats["captured"] >= 1 and tracker.stats["replayed"] >= N - 12, tracker.stats
    # the first two replays of each graph (a transient shape may be replayed once only)
    assert tracker.stats["captured"] <= tracker.stats["self_checks"] <= 2 * tracker.stats["captured"]
    # padded to fixed slots (pointers to a multiple of 8, always masked): float reordering only
    assert _worst(graphed, eager) <= 1e-4


@pytest.mark.parametrize("corrupt", ["wrong", "nothing"])
def test_a_replay_that_differs_turns_graphs_off_and_nothing_wrong_is_kept(clip, eager, caplog, corrupt):
    with caplog.at_level(logging.WARNING, logger="samtrack.session.backends.sam2_graphs"):
        graphed, tracker = _run(clip, f"corrupt_{corrupt}", graphs=True, corrupt=corrupt)
    assert not tracker.enabled and not tracker.graphs
    assert tracker.stats["replayed"] == 1  # the first replay was checked, and its result not used
    assert "CUDA graphs off" in caplog.text
    assert _worst(graphed, eager) <= 1e-4


def test_cuda_graphs_on_a_cpu_session_is_a_clear_error(clip):
    tmp, ck, vid = clip
    with pytest.raises(InvalidOptionError, match="CUDA graphs need a CUDA device"):
        samtrack.open_session(vid, checkpoint=ck, image_size=mu.IMAGE_SIZE, device="cpu", workdir=tmp / "err",
                              config=SessionConfig(cuda_graphs=True))


def test_graph_inputs_are_bounded_in_memory(clip, eager):
    """Every graph keeps its own padded memory as static input (~15 MB per object at 1024 px): a
    budget bounds them. Below one graph's inputs nothing is captured; with room for the largest graph
    only, the least recently used is dropped when another is captured. Results are the same."""
    out, tracker = _run(clip, "budget_none", graphs=True, budget=1000)
    assert tracker.stats["captured"] == 0 and tracker.stats["replayed"] == 0 and tracker.enabled
    assert _worst(out, eager) == 0.0  # every step eager, unpadded: the same computation
    _, full = _run(clip, "budget_full", graphs=True)
    sizes = [g.static_bytes for g in full.graphs.values()]
    assert len(sizes) >= 2
    out, tracker = _run(clip, "budget_one", graphs=True, budget=max(sizes))
    assert tracker.stats["captured"] >= 2 and tracker.stats["dropped"] >= 1 and len(tracker.graphs) == 1
    assert _worst(out, eager) <= 1e-4
