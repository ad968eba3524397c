"""Object-creating prompts (text / exemplars / everything) and re-detection, with the cost-free fake
backend so that what is "found" is chosen by the test (the models' own detections are checked against
upstream in the SAM3 and SAM2 fidelity tests)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from samtrack.errors import InvalidOptionError, PromptError
from samtrack.io import open_video
from samtrack.session import TrackingSession, backends
from samtrack.session.backends.base import DetectRequest, Detection
from samtrack.session.models import get_model
from samtrack.session.prompts import Concept
from tests import media

W, H, N = 64, 48, 12


class Scripted:
    """The fake backend, whose detect() returns the squares listed per frame in ``plan``."""

    def __init__(self, plan):
        spec = dataclasses.replace(get_model("sam2.1_hiera_tiny"), name="fake", family="fake")
        self.inner = backends.load_backend(spec, None, image_size=64, device="cpu")
        self.plan = plan
        self.requests: list[tuple[int, DetectRequest]] = []

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def detect(self, frame, feats, request):
        f = feats.frame_idx if feats is not None else -1
        self.requests.append((f, request))
        out = []
        for x0, y0, x1, y1, score in self.plan.get(f, []):
            m = np.zeros((H, W), bool)
            m[y0:y1, x0:x1] = True
            out.append(Detection(m, (x0, y0, x1, y1), score))
        return out


@pytest.fixture
def session(tmp_path):
    vid = media.write_video(tmp_path / "v.mp4", N, w=W, h=H)
    fs = open_video(vid, workdir=tmp_path / "frames")

    def make(plan):
        b = Scripted(plan)
        return TrackingSession(fs, b, workdir=tmp_path / "job"), b
    yield make
    fs.close()


def test_text_creates_one_object_per_detection_above_the_threshold(session):
    s, b = session({3: [(2, 2, 12, 12, 0.9), (30, 20, 40, 30, 0.7), (50, 30, 60, 40, 0.2)]})
    found = s.add_text(3, "cell", threshold=0.5)
    assert found.created == [1, 2] and s.obj_ids == [1, 2]
    assert [s.results.object_meta(o)["name"] for o in s.obj_ids] == ["cell 1", "cell 2"]
    req = b.requests[-1][1]
    assert req.text == "cell" and req.threshold == 0.5 and req.boxes is None
    # each object's prompt is its detection's mask on that frame, shown exactly
    assert s.keyframes(1) == [3] and s.prompt_at(3, 1).mask[2:12, 2:12].all()
    assert found.result.masks[1][20:30, 30:40].all() and not found.result.masks[1][:10].any()
    # and it is tracked like any object
    res = list(s.propagate("both"))
    assert sorted(r.frame_idx for r in res) == list(range(N)) and all(r.obj_ids == [1, 2] for r in res)


def test_a_second_query_adds_nothing_twice(session):
    s, _ = session({3: [(2, 2, 12, 12, 0.9)], 5: [(3, 2, 13, 12, 0.9), (40, 30, 50, 40, 0.8)]})
    s.add_text(3, "cell")
    list(s.propagate("forward"))
    # frame 5: the fake tracker's mask of object 1 is a centred disc, not the square; put the square there
    s.add_mask(5, 1, s.prompt_at(3, 1).mask)
    again = s.add_text(5, "cell")
    assert again.created == [2] and list(again.matched) == [1]


def test_exemplar_boxes_are_validated_and_passed(session):
    s, b = session({0: [(2, 2, 12, 12, 0.9)]})
    s.add_exemplars(0, [[1, 1, 14, 14], [30, 30, 80, 60]], [1, 0])
    req = b.requests[-1][1]
    np.testing.assert_allclose(req.boxes, [[1, 1, 14, 14], [30, 30, 64, 48]])  # clipped to the frame
    assert req.box_labels.tolist() == [1, 0] and req.text is None
    assert s.results.object_meta(1)["name"] == "exemplar 1"
    with pytest.raises(PromptError, match="positive"):
        s.add_exemplars(0, [[1, 1, 14, 14]], [0])
    with pytest.raises(PromptError, match="noun phrase"):
        s.add_text(0, "  ")
    with pytest.raises(PromptError, match="between 0 and 1"):
        s.add_text(0, "cell", threshold=1.5)


def test_concepts_survive_reopening_and_reset_forgets_them(session, tmp_path):
    s, _ = session({2: [(2, 2, 12, 12, 0.9)]})
    s.add_text(2, "nucleus", threshold=0.4)
    s.close()
    s2, _ = session({})
    assert s2.concepts == [(2, Concept("nucleus", (), (), 0.4))] and s2.obj_ids == [1]
    s2.reset()
    assert s2.concepts == [] and s2.obj_ids == []


def test_redetection_adds_objects_that_appear_later_once(session):
    # a second cell appears at frame 6; re-detection every 3 frames from frame 0. The fake tracker's
    # mask is a centred disc on every tracked frame, so on frame 9 a detection inside the disc is an
    # object already tracked there (nothing added), while on frame 6 a corner square is new.
    plan = {0: [(2, 2, 12, 12, 0.9)], 3: [], 6: [(50, 36, 62, 46, 0.9)], 9: [(26, 19, 38, 29, 0.9)]}
    s, b = session(plan)
    s.add_text(0, "cell")
    results = list(s.propagate_and_redetect(3, "both"))
    assert s.obj_ids == [1, 2]
    assert s.keyframes(2) == [6]  # found where it appeared; frame 9's detection matched it (tracked there)
    assert sorted(f for f, _ in b.requests) == [0, 3, 6, 9]
    assert (s.status(2) != 0).all()  # the new object was tracked over the whole video, both ways
    assert any(2 in r.obj_ids for r in results)
    with pytest.raises(InvalidOptionError):
        list(s.propagate_and_redetect(0))


def test_families_without_detection_say_which_has_it(tmp_path):
    class NoDetect:  # a backend of a family that cannot create objects
        def __init__(self):
            self.inner = Scripted({}).inner

        def __getattr__(self, k):
            if k == "detect":
                raise AttributeError(k)
            return getattr(self.inner, k)

    vid = media.write_video(tmp_path / "v.mp4", 4, w=W, h=H)
    with open_video(vid, workdir=tmp_path / "frames") as fs:
        s = TrackingSession(fs, NoDetect(), workdir=tmp_path / "job")
        with pytest.raises(PromptError, match="SAM3"):
            s.add_text(0, "cell")
        s.close()


def test_rerunning_a_prompt_file_keeps_found_objects_and_drops_removed_finds(session):
    from samtrack.job import apply_prompt_changes
    from samtrack.session.prompt_file import ObjectPrompts, PromptSet

    s, b = session({1: [(2, 2, 12, 12, 0.9), (30, 20, 40, 30, 0.8)]})
    clicks = ObjectPrompts(7, "mine", None, ({"frame": 0, "kind": "points", "points": [[5, 5]], "labels": [1],
                                               "box": None},))
    cell, other = (1, Concept("cell", (), (), 0.5)), (1, Concept("nucleus", (), (), 0.5))
    assert apply_prompt_changes(s, PromptSet([clicks], [cell])) == 2
    assert s.obj_ids == [7, 8, 9]  # found objects are numbered after the file's
    n_detect = len(b.requests)
    assert apply_prompt_changes(s, PromptSet([clicks], [cell])) == 0  # unchanged: nothing runs again
    assert len(b.requests) == n_detect and s.obj_ids == [7, 8, 9]
    apply_prompt_changes(s, PromptSet([clicks], [other]))  # the "cell" find is replaced: its objects go
    assert s.obj_ids == [7, 10, 11] and [q.text for _, q in s.concepts] == ["nucleus"]


def test_a_refused_query_encodes_nothing_and_a_repeated_one_is_one_record(session):
    s, b = session({2: [(2, 2, 12, 12, 0.9)]})
    b.inner.object_queries = frozenset({"everything"})  # a SAM2-like family
    with pytest.raises(PromptError, match="SAM3"):
        s.add_text(2, "cell")
    assert sum(b.calls["encode_image"].values()) == 0 and not b.requests
    b.inner.object_queries = frozenset({"concept"})
    s.add_text(2, "cell")
    s.add_text(2, "cell")
    assert len(s.concepts) == 1 and s.obj_ids == [1]


def test_objects_added_by_redetection_survive_a_rerun_of_the_same_prompts(session):
    from samtrack.job import apply_prompt_changes
    from samtrack.session.prompt_file import PromptSet

    plan = {0: [(2, 2, 12, 12, 0.9)], 6: [(50, 36, 62, 46, 0.9)]}
    s, _ = session(plan)
    cell = (0, Concept("cell", (), (), 0.5))
    apply_prompt_changes(s, PromptSet([], [cell]))
    list(s.propagate_and_redetect(6, "forward"))
    assert s.obj_ids == [1, 2]
    assert apply_prompt_changes(s, PromptSet([], [cell])) == 0  # the same prompts again: nothing removed
    assert s.obj_ids == [1, 2] and s.find_objects_created() == {1, 2}
