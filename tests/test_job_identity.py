"""One job identity: the resolved path and content of the source, reader options, model, checkpoint
hash and image size decide whether stored results are served; never mtime, never id()."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import samtrack
from samtrack.errors import JobMismatchError
from samtrack.io.identity import source_identity
from samtrack.io.result_store import Status
from samtrack.job import run_track, start_track
from samtrack.session import default_workdir, get_model
from tests import media
from tests import model_utils as mu

N = 24


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ident")
    ck = mu.make_checkpoint(tmp / "ck.pt", image_size=128)
    a = media.write_video(tmp / "a.mp4", N, w=128, h=96)
    b = media.write_video(tmp / "b.mp4", N, w=128, h=96,
                          frames=[media.frame_pattern(i, 96, 128, seed=3) for i in range(N)])
    return tmp, ck, a, b


def open_(src, ck, wd, **kw):
    return samtrack.open_session(src, checkpoint=ck, image_size=128, device="cpu", workdir=wd, **kw)


def test_identity_is_content_and_resolved_path_not_spelling_or_mtime(assets, tmp_path, monkeypatch):
    tmp, _, a, b = assets
    monkeypatch.chdir(a.parent)
    link = tmp_path / "link.mp4"
    os.symlink(a, link)
    assert source_identity(a.name) == source_identity(a) == source_identity(link)
    before = source_identity(a)
    os.utime(a, (1, 1))  # touched, same bytes
    assert source_identity(a) == before
    c = tmp_path / a.name
    shutil.copy(b, c)
    assert source_identity(c)["content"] != before["content"]  # same name and frame count, other recording


def test_arrays_are_identified_by_content_not_id():
    x = np.zeros((5, 16, 16, 3), np.uint8)
    y = x.copy()
    z = x.copy()
    z[3, 2, 2, 0] = 1  # one sample in a middle frame
    assert source_identity(x) == source_identity(y)
    assert source_identity(x) != source_identity(z)
    spec = get_model("sam2.1_hiera_tiny")
    assert default_workdir(x, spec, 128) == default_workdir(y, spec, 128) != default_workdir(z, spec, 128)


def test_replaced_video_or_other_checkpoint_never_serves_old_results(assets, tmp_path):
    tmp, ck, a, b = assets
    clip, wd = tmp_path / "clip.mp4", tmp_path / "w"
    shutil.copy(a, clip)
    with open_(clip, ck, wd) as s:
        s.add_points(0, 1, [[50, 50]], [1])
        list(s.propagate("forward"))
    shutil.copy(b, clip)  # another recording, same name, same frame count
    with pytest.raises(JobMismatchError, match="content changed") as e:
        open_(clip, ck, wd)
    assert "source" in e.value.differences
    with open_(clip, ck, wd, reset=True) as s:
        assert s.obj_ids == [] and s.results.object_ids == []
        s.add_points(0, 1, [[50, 50]], [1])
        list(s.propagate("forward", stop=3))
    other = mu.make_checkpoint(tmp_path / "other.pt", image_size=128, seed=1)
    with pytest.raises(JobMismatchError, match="checkpoint"):
        open_(clip, other, wd)
    same_weights = tmp_path / "copy" / ck.name
    same_weights.parent.mkdir()
    shutil.copy(ck, same_weights)
    with open_(clip, same_weights, wd) as s:  # the same weights elsewhere: the same job
        assert (s.status(1)[1:4] == Status.PROPAGATED).all()


def test_an_array_workdir_refuses_another_array(assets, tmp_path):
    _, ck, _, _ = assets
    x = np.zeros((4, 48, 64, 3), np.uint8)
    with open_(x, ck, tmp_path / "w") as s:
        s.add_box(0, 1, [5, 5, 30, 30])
    y = x.copy()
    y[2] = 200
    with pytest.raises(JobMismatchError):
        open_(y, ck, tmp_path / "w")
    with open_(x.copy(), ck, tmp_path / "w") as s:  # equal content, another object: the same job
        assert s.obj_ids == [1]


def _prompts(path, objects):
    path.write_text(json.dumps({"objects": objects}))
    return path


def test_an_edited_prompt_file_is_applied_as_corrections(assets, tmp_path):
    _, ck, a, _ = assets
    out = tmp_path / "job"
    p1 = [{"id": 1, "prompts": [{"frame": 0, "points": [[30, 40]], "labels": [1]}]}]
    kw = dict(checkpoint=ck, image_size=128, device="cpu")
    run_track(a, _prompts(tmp_path / "p.json", p1), out, **kw).close()
    p2 = [{"id": 1, "prompts": [{"frame": 0, "points": [[30, 40]], "labels": [1]}, {"frame": 16, "box": [20, 20, 60, 70]}]}]
    s, start = start_track(a, _prompts(tmp_path / "p.json", p2), out, **kw)
    assert start.resumed and start.prompts_changed == 1 and start.frames_done == 10  # 0..8 and 16 still valid
    list(s.propagate("both"))
    # keyframe 16 owns 9..15 (nearer than 0) and everything after it: only those are recomputed
    assert sorted(s.backend.calls["track"]) == list(range(9, 16)) + list(range(17, N))
    s.close()
    s, start = start_track(a, tmp_path / "p.json", out, **kw)  # unchanged: nothing to do
    assert start.prompts_changed == 0 and start.to_compute == 0 and start.first_frame is None
    s.close()
    s, start = start_track(a, tmp_path / "p.json", out, force=True, **kw)  # --force: everything again
    assert start.to_compute == N - 2 and start.progress_total == N  # keyframes 0 and 16 are not computed
    list(s.propagate("both"))
    assert sorted(s.backend.calls["track"]) == [f for f in range(N) if f not in (0, 16)]
    s.close()


def test_a_rewritten_frame_of_an_image_folder_is_noticed_and_hidden_files_are_not(tmp_path):
    import tifffile

    d = tmp_path / "frames"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        tifffile.imwrite(d / f"{i:03d}.tif", rng.integers(0, 255, (48, 64), dtype=np.uint8))
    before = source_identity(d)
    (d / ".DS_Store").write_bytes(b"finder")
    (d / "notes.txt").write_text("imaging notes")
    assert source_identity(d) == before
    tifffile.imwrite(d / "003.tif", rng.integers(0, 255, (48, 64), dtype=np.uint8))  # same size, other pixels
    assert (d / "003.tif").stat().st_size == (d / "002.tif").stat().st_size
    assert source_identity(d)["content"] != before["content"]
