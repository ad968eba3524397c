"""Session semantics: keyframes, correction spans (counted model calls), status, errors, cancellation."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import samtrack
from samtrack.errors import (CheckpointError, FrameIndexError, InvalidOptionError, NoPromptsError, PromptError,
                             UnknownModelError, UnknownObjectError)
from samtrack.io.result_store import Status
from samtrack.session import SessionConfig
from tests import media
from tests import model_utils as mu

N = 30


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("session")
    return tmp, mu.make_checkpoint(tmp / "ck.pt", image_size=128), media.write_video(tmp / "v.mp4", N, w=128, h=96)


@pytest.fixture
def session(assets, tmp_path):
    _, ck, vid = assets
    s = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w")
    yield s
    s.close()


def test_correction_reruns_only_its_object_and_span(session):
    s = session
    s.add_points(0, 1, [[30, 40]], [1])
    s.add_points(0, 2, [[90, 60]], [1])
    list(s.propagate("forward"))
    masks2 = {f: s.results.mask(f, 2).copy() for f in range(N)}
    masks1_before = {f: s.results.mask(f, 1).copy() for f in range(12)}
    s.add_points(20, 1, [[60, 50]], [1])
    st1, st2 = s.status(1), s.status(2)
    # stale: what the next propagation recomputes (past 20, and 11..19 that keyframe 20 now owns)
    assert (st1[11:20] == Status.STALE).all() and (st1[21:] == Status.STALE).all() and st1[20] == Status.PROMPTED
    assert (st1[1:11] == Status.PROPAGATED).all()
    assert (st2[1:] == Status.PROPAGATED).all()
    s.backend.calls["track"].clear()
    list(s.propagate("both"))
    calls = s.backend.calls["track"]
    # forward from 20 to the end, backward from 20 down to the frames nearer to 20 than to 0 (11..19)
    assert sorted(calls) == list(range(11, 20)) + list(range(21, N))
    assert set(calls.values()) == {1}  # object 1 only
    assert (s.status(1)[1:] != Status.STALE).all()
    for f in range(N):  # object 2 untouched, bit for bit
        np.testing.assert_array_equal(s.results.mask(f, 2), masks2[f])
    for f in range(1, 11):  # object 1 before the midpoint keeps its first pass
        np.testing.assert_array_equal(s.results.mask(f, 1), masks1_before[f])
    assert s.results.sources(1)[15] == 20 and s.results.sources(1)[5] == 0


def test_second_propagation_computes_nothing(session):
    session.add_box(5, 1, [20, 20, 60, 70])
    list(session.propagate("both"))
    session.backend.calls["track"].clear()
    list(session.propagate("both"))
    assert session.backend.calls["track"].total() == 0


def test_overlap_rule_forward_lets_the_earlier_keyframe_own_the_gap(assets, tmp_path):
    _, ck, vid = assets
    s = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w",
                              config=SessionConfig(overlap_rule="forward"))
    s.add_points(0, 1, [[30, 40]], [1])
    s.add_points(20, 1, [[30, 40]], [1])
    list(s.propagate("both"))
    src = s.results.sources(1)
    assert (src[1:20] == 0).all() and (src[21:] == 20).all()
    s.close()


def test_prompt_on_tracked_frame_is_kept_and_keyframe(session):
    s = session
    s.add_points(0, 1, [[30, 40]], [1])
    list(s.propagate("forward"))
    r = s.add_points(10, 1, [[100, 20]], [1])
    kept = r.logits[0].copy()
    assert s.keyframes(1) == [0, 10]
    list(s.propagate("both"))
    np.testing.assert_array_equal(s.frame_result(10).logits[0], kept)
    assert s.status(1)[10] == Status.PROMPTED


def test_object_added_mid_video_and_removed(session):
    s = session
    s.add_points(0, 1, [[30, 40]], [1])
    list(s.propagate("forward"))
    s.add_points(15, 7, [[90, 60]], [1])
    s.backend.calls["track"].clear()
    res = list(s.propagate("both"))
    assert {f for f in s.backend.calls["track"]} == set(range(N)) - {15}
    # object 1 is only yielded at its own keyframe, where its (empty) pass starts; nothing of it is recomputed
    assert all(set(r.obj_ids) - {7} <= ({1} if r.frame_idx == 0 else set()) for r in res)
    assert (s.status(7) != Status.NOT_RUN).all()
    s.remove_object(7)
    assert s.obj_ids == [1]
    with pytest.raises(UnknownObjectError):
        s.status(7)


def test_clear_prompts_makes_its_frames_stale(session):
    s = session
    s.add_points(0, 1, [[30, 40]], [1])
    s.add_points(20, 1, [[30, 40]], [1])
    list(s.propagate("both"))
    s.clear_prompts(20, 1)
    st = s.status(1)
    assert s.keyframes(1) == [0]
    assert (st[11:] == Status.STALE).all() and (st[1:11] == Status.PROPAGATED).all()
    list(s.propagate("forward"))
    assert (s.status(1)[1:] == Status.PROPAGATED).all()


def test_never_computed_frames_read_as_not_run(session):
    session.add_points(10, 1, [[30, 40]], [1])
    list(session.propagate("forward", stop=15))
    st = session.status(1)
    assert (st[:10] == Status.NOT_RUN).all() and (st[16:] == Status.NOT_RUN).all()
    assert session.results.mask(3, 1) is None  # not an empty mask: no mask
    assert session.results.mask(12, 1) is not None


def test_cancel_from_another_thread_keeps_finished_frames(session):
    s = session
    s.add_points(0, 1, [[30, 40]], [1])
    seen = []
    for r in s.propagate("forward"):
        seen.append(r.frame_idx)
        if len(seen) == 5:
            t = threading.Thread(target=s.cancel)
            t.start()
            t.join()  # cancelled from another thread before the next frame: it stops there
    assert len(seen) == 5
    st = s.status(1)
    assert (st[1:seen[-1] + 1] == Status.PROPAGATED).all() and (st[seen[-1] + 2:] == Status.NOT_RUN).all()
    s.backend.calls["track"].clear()
    list(s.propagate("forward"))  # resumes where it stopped
    assert min(s.backend.calls["track"]) == seen[-1] + 1


def test_errors_are_typed_and_say_what_to_do(session, assets, tmp_path):
    s = session
    with pytest.raises(NoPromptsError, match="add points"):
        list(s.propagate())
    with pytest.raises(PromptError, match="outside"):
        s.add_points(0, 1, [[500, 10]], [1])
    with pytest.raises(PromptError, match="labels"):
        s.add_points(0, 1, [[5, 10]], [1, 0])
    with pytest.raises(PromptError, match="inverted"):
        s.add_box(0, 1, [50, 50, 10, 60])
    with pytest.raises(PromptError, match="video is 128x96"):
        s.add_mask(0, 1, np.ones((10, 10), bool))
    with pytest.raises(FrameIndexError):
        s.add_points(N, 1, [[5, 5]], [1])
    with pytest.raises(UnknownObjectError):
        s.remove_object(99)
    with pytest.raises(InvalidOptionError):
        list(s.propagate("sideways"))
    with pytest.raises(UnknownModelError):
        samtrack.open_session(assets[2], model="sam9_huge", checkpoint="untrained")
    # a checkpoint of another size is named
    other = mu.make_checkpoint(tmp_path / "small.pt", model="sam2.1_hiera_small", image_size=128)
    with pytest.raises(CheckpointError, match="sam2.1_hiera_small"):
        samtrack.open_session(assets[2], model="sam2.1_hiera_tiny", checkpoint=other, image_size=128, device="cpu",
                              workdir=tmp_path / "x")


def test_results_of_another_job_are_refused(assets, tmp_path):
    from samtrack.errors import CacheError

    _, ck, vid = assets
    s = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w")
    s.close()
    with pytest.raises(CacheError, match="another job"):
        samtrack.open_session(vid, checkpoint=ck, image_size=256, device="cpu", workdir=tmp_path / "w")


def test_reopen_restores_objects_prompts_and_results(assets, tmp_path):
    _, ck, vid = assets
    mask = np.zeros((96, 128), bool)
    mask[10:40, 20:60] = True
    s = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w")
    s.add_points(0, 1, [[30, 40]], [1])
    s.add_mask(10, 2, mask)
    list(s.propagate("forward", stop=20))
    s.add_box(25, 3, [10, 10, 50, 50])  # pending: never propagated before the "crash"
    want = {f: s.frame_result(f).logits.copy() for f in (5, 15, 25)}
    status = {o: s.status(o).copy() for o in (1, 2, 3)}
    s.close()
    s2 = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w")
    assert s2.obj_ids == [1, 2, 3] and s2.keyframes(2) == [10] and s2.keyframes(3) == [25]
    for o in (1, 2, 3):
        np.testing.assert_array_equal(s2.status(o), status[o])
    for f, v in want.items():
        np.testing.assert_allclose(s2.frame_result(f).logits, v, atol=1e-5)
    s2.backend.calls["track"].clear()
    list(s2.propagate("forward"))  # continues: only frames never computed
    assert min(s2.backend.calls["track"]) == 21
    s2.close()


def test_host_tier_stays_bounded_as_frames_are_tracked(assets, tmp_path):
    _, ck, vid = assets
    s = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w")
    s.bank.host_entries_per_object = 8
    s.add_points(0, 1, [[30, 40]], [1])
    sizes = []
    for r in s.propagate("forward"):
        sizes.append(s.bank.host_bytes)
    assert max(sizes[12:]) <= max(sizes[8:12]) * 1.01  # flat once the window is full
    assert len(s.bank._host) <= 9  # 8 recent entries + the keyframe
    assert s.bank.frames(1) == set(range(N))  # everything is still there (on disk)
    s.close()


def test_keyframes_read_per_step_are_capped(assets, tmp_path):
    _, ck, vid = assets
    s = samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w",
                              config=SessionConfig(max_keyframes_in_attention=3))
    for f in range(0, 30, 3):
        s.add_points(f, 1, [[30, 40]], [1])
    s._finalize_prompts([s._objects[1]])
    view = s._view(s._objects[1], 16, False)
    assert sorted(view.cond) == [12, 15, 18]  # closest before, closest after, then the nearest other
    s.close()


def test_reprompting_a_keyframe_whose_memory_has_no_pointer_on_cpu(session):
    """A box on frame 4 after a mask there, with keyframes only later in the video: attention then
    reads bf16 memories and no float pointer. On the CPU (no autocast) that crashed in F.linear."""
    s = session
    s.add_box(4, 1, [20, 20, 70, 60])
    s.add_points(14, 1, [[50, 40]], [1])
    list(s.propagate("forward", 4, 14))
    m = np.zeros((96, 128), bool)
    m[40:80, 80:100] = True
    s.add_mask(4, 1, m)
    r = s.add_box(4, 1, [20, 20, 70, 60])
    assert s.prompt_at(4, 1).box == (20.0, 20.0, 70.0, 60.0)
    i = r.obj_ids.index(1)
    assert r.masks[i].shape == (96, 128) and np.isfinite(r.object_scores[i]) and np.isfinite(r.logits[i]).all()


def test_object_metadata_labels_and_result_ids_are_checked(session):
    """A colour, parent, label or object id that means nothing is refused in words, not stored or guessed."""
    from samtrack.errors import PromptError, UnknownObjectError
    from samtrack.session.prompts import make_points

    with pytest.raises(PromptError, match="1 \\(positive\\) or 0"):
        make_points([[1, 1]], [0.5], 10, 10)  # was silently truncated to 0 (negative)
    with pytest.raises(PromptError, match="1 \\(positive\\) or 0"):
        make_points([[1, 1]], ["a"], 10, 10)
    assert make_points([[1, 1]], [1.0], 10, 10).labels == (1,)
    s = session
    s.add_points(0, 1, [[5, 5]], [1])
    for bad in ("notacolor", (2**70, 0, 0), (1, 2), (True, 0, 0), (0, 0, 256)):
        with pytest.raises(PromptError, match="three integers 0..255"):
            s.add_object(1, color=bad)
    for bad in (1, 0, -3, "2", True):
        with pytest.raises(PromptError, match="parent"):
            s.add_object(1, parent=bad)
    s.add_object(2, color=np.array([10, 20, 30]), parent=1)
    assert s.results.object_meta(2)["color"] == [10, 20, 30] and s.results.object_meta(2)["parent"] == 1
    with pytest.raises(UnknownObjectError, match="unknown object 7"):
        s.frame_result(0, [7])
