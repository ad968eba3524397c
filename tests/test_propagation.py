"""Propagation does what was asked: ranges that need a keyframe outside them, each frame yielded
once, nothing to do yields nothing, and stale marks equal what the next propagation recomputes."""
from __future__ import annotations

import numpy as np
import pytest

import samtrack
from samtrack.errors import UnreachableFramesError
from samtrack.io.result_store import Status
from tests import media
from tests import model_utils as mu

N = 30


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prop")
    return mu.make_checkpoint(tmp / "ck.pt", image_size=128), media.write_video(tmp / "v.mp4", N, w=128, h=96)


@pytest.fixture
def s(assets, tmp_path):
    ck, vid = assets
    session = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w")
    yield session
    session.close()


def test_backward_range_before_the_only_keyframe_starts_at_that_keyframe(s):
    s.add_box(N - 1, 1, [20, 20, 60, 70])
    got = [r.frame_idx for r in s.propagate("backward", start=0, stop=2)]
    assert got == [2, 1, 0]  # the frames asked for, once, in the pass's order
    st = s.status(1)
    assert (st[:N - 1] == Status.PROPAGATED).all()  # 3..28 computed on the way (the pass needs them)
    assert s.results.sources(1)[0] == N - 1


def test_forward_range_after_the_only_keyframe(s):
    s.add_box(0, 1, [20, 20, 60, 70])
    got = [r.frame_idx for r in s.propagate("forward", start=N - 3, stop=N - 1)]
    assert got == [N - 3, N - 2, N - 1]
    assert (s.status(1)[1:] == Status.PROPAGATED).all()


def test_a_direction_that_cannot_reach_the_range_is_a_clear_error(s):
    s.add_box(N - 1, 1, [20, 20, 60, 70])
    with pytest.raises(UnreachableFramesError, match="backward") as e:
        list(s.propagate("forward", start=0, stop=2))
    assert e.value.frames == {1: [0, 1, 2]}
    assert s.backend.calls["track"].total() == 0
    assert (s.status(1)[:N - 1] == Status.NOT_RUN).all()


def test_both_yields_each_frame_once_with_every_object_computed_on_it(s):
    s.add_box(0, 1, [20, 20, 60, 70])
    s.add_box(N - 1, 2, [60, 30, 100, 80])
    seen, progress = [], []
    for r in s.propagate("both", progress=lambda d, t: progress.append((d, t))):
        seen.append((r.frame_idx, tuple(r.obj_ids)))
    frames = [f for f, _ in seen]
    assert sorted(frames) == list(range(N)) and len(set(frames)) == N
    assert all(ids == (1, 2) for _, ids in seen)  # each frame once, after both objects are computed
    assert progress[-1] == (N, N) and [d for d, _ in progress] == list(range(1, N + 1))


def test_nothing_to_do_yields_nothing(s):
    s.add_box(5, 1, [20, 20, 60, 70])
    assert len(list(s.propagate("both"))) == N
    calls = []
    assert list(s.propagate("both", progress=lambda d, t: calls.append((d, t)))) == []
    assert calls == [] and s.backend.calls["track"].total() == N - 1


def _recomputed_after(s, obj):
    """Propagate "both"; the frames the model computed for ``obj`` (one object in the session)."""
    s.backend.calls["track"].clear()
    list(s.propagate("both"))
    return sorted(s.backend.calls["track"])


def test_stale_marks_are_exactly_what_the_next_propagation_recomputes(s):
    s.add_points(0, 1, [[30, 40]], [1])
    s.add_points(N - 1, 1, [[30, 40]], [1])
    list(s.propagate("both"))
    # a correction in the middle of a long gap: up to the midpoints to both neighbours
    s.add_points(14, 1, [[60, 50]], [1])
    stale = np.flatnonzero(s.status(1) == Status.STALE).tolist()
    assert stale == list(range(8, 14)) + list(range(15, 22))  # 8..13 nearer 14 than 0; 15..21 nearer than 29
    assert _recomputed_after(s, 1) == stale
    # a correction next to a keyframe, then a removed keyframe
    for change in (lambda: s.add_points(3, 1, [[40, 40]], [1]), lambda: s.clear_prompts(14, 1),
                   lambda: s.add_box(25, 1, [10, 10, 50, 60])):
        change()
        stale = np.flatnonzero(s.status(1) == Status.STALE).tolist()
        assert stale, "a keyframe change must make some frames stale"
        assert _recomputed_after(s, 1) == stale
        assert not (s.status(1) == Status.STALE).any()


def test_a_prompt_only_affects_the_span_between_its_neighbouring_keyframes(s):
    s.add_points(0, 1, [[30, 40]], [1])
    s.add_points(16, 1, [[30, 40]], [1])
    list(s.propagate("forward"))  # 9..15 come from keyframe 0 (forward only), though 16 is nearer
    before = s.status(1).copy()
    s.add_points(24, 1, [[40, 40]], [1])  # beyond keyframe 16: nothing before 16 can change
    st = s.status(1)
    assert (st[:16] == before[:16]).all() and (st[17:21] == before[17:21]).all()
    assert (st[21:24] == Status.STALE).all() and (st[25:] == Status.STALE).all()  # 21..23: nearer 24 than 16
