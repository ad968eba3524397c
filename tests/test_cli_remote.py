"""`samtrack track --server`: the job's session on a real ``samtrack serve`` subprocess (127.0.0.1) gives
the masks and exports a local `samtrack track` gives; an edited prompt file re-run recomputes the frames the
local job recomputes (and no others); a re-run with nothing changed computes nothing; user mistakes are one
``error:`` line with exit 2."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import samtrack
from samtrack.cli import main
from samtrack.io.result_store import Status
from samtrack.job import open_results
from tests import media
from tests import model_utils as mu
from tests.server_utils import SERVER_ENV, ServerProcess, free_port, same_torch_threads

N = 12  # frames
W, H = 96, 64
SIZE = mu.IMAGE_SIZE  # 256

PROMPTS = {"objects": [
    {"id": 1, "name": "a", "prompts": [{"frame": 0, "points": [[30, 30]], "labels": [1]}]},
    {"id": 2, "name": "b", "prompts": [{"frame": 5, "box": [55, 15, 85, 50]}]}]}


_same_threads = pytest.fixture(scope="module", autouse=True)(same_torch_threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_remote_data")  # the server's root
    vid = media.write_video(root / "v.mp4", N, w=W, h=H)
    ck = mu.make_checkpoint(root / "ck.pt", image_size=SIZE)
    return root, vid, ck


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    root, _, _ = assets
    with ServerProcess(roots=[root], workdir=tmp_path_factory.mktemp("cli_server"), env=SERVER_ENV) as srv:
        yield srv


def run(argv, capsys) -> tuple[int, str]:
    """``samtrack ARGV`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


def local_track(assets, prompts, out, capsys) -> str:
    _, vid, ck = assets
    rc, err = run(["track", vid, "--prompts", prompts, "--out", out, "--checkpoint", ck, "--image-size", SIZE,
                   "--device", "cpu", "--export", "tiff"], capsys)
    assert rc == 0, err
    return err


def remote_track(assets, server, prompts, out, capsys, *extra) -> str:
    root, vid, ck = assets
    rc, err = run(["track", vid, "--prompts", prompts, "--server", server.url, "--token-file", server.token_file,
                   "--out", out, "--checkpoint", ck, "--image-size", SIZE, "--workdir", root / "job",
                   "--export", "tiff", *extra], capsys)
    assert rc == 0, err
    return err


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal width


def stores(job) -> dict:
    rs, _ = open_results(job)
    return {o: (rs.status(o), [rs.mask(f, o) for f in range(N)]) for o in rs.object_ids}


def assert_same_stores(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for o in a:
        np.testing.assert_array_equal(a[o][0], b[o][0])
        for f in range(N):
            ma, mb = a[o][1][f], b[o][1][f]
            assert (ma is None) == (mb is None), (o, f)
            if ma is not None:
                np.testing.assert_array_equal(ma, mb, err_msg=f"object {o} frame {f}")


def test_track_server_equals_local_and_reruns_only_what_changed(assets, server, tmp_path, capsys):
    root, vid, ck = assets
    p = tmp_path / "p.json"
    p.write_text(json.dumps(PROMPTS))
    local, remote = tmp_path / "local", tmp_path / "remote"

    local_track(assets, p, local, capsys)
    err = remote_track(assets, server, p, remote, capsys)
    assert "resuming" not in err and f"computed {N} frame(s)" in one_line(err)
    assert_same_stores(stores(local), stores(root / "job"))  # the server's folder: the same masks and statuses
    first = tifffile.imread(remote / "labels.tif")
    np.testing.assert_array_equal(first, tifffile.imread(local / "labels.tif"))  # the download, the same export
    assert first.shape == (N, H, W) and set(np.unique(first)) >= {1, 2}

    # a correction of object 1 on frame 8: both jobs recompute the same frames, and only those
    edited = json.loads(json.dumps(PROMPTS))
    edited["objects"][0]["prompts"].append({"frame": 8, "points": [[60, 20], [30, 30]], "labels": [1, 0]})
    p.write_text(json.dumps(edited))
    lerr, rerr = one_line(local_track(assets, p, local, capsys)), one_line(remote_track(assets, server, p, remote,
                                                                                          capsys))
    planned = re.search(r"computing (\d+) frame\(s\): ([0-9][0-9, -]*[0-9])", lerr)
    k, frames = int(planned[1]), planned[2]
    assert 0 < k < N
    assert f"1 prompt change(s) from the prompt file applied" in rerr
    assert f"computed {k} frame(s): {frames}" in rerr, (lerr, rerr)
    assert_same_stores(stores(local), stores(root / "job"))
    second = tifffile.imread(remote / "labels.tif")
    np.testing.assert_array_equal(second, tifffile.imread(local / "labels.tif"))
    assert not np.array_equal(second, first)  # the export was refreshed with the correction

    with samtrack.connect(server.url, token_file=server.token_file) as client:  # the session on the server
        s = client.open_session(str(vid), checkpoint=str(ck), image_size=SIZE, workdir=str(root / "job"))
        try:
            assert s.obj_ids == [1, 2] and s.keyframes(1) == [0, 8] and s.keyframes(2) == [5]
            assert s.results.object_meta(1)["name"] == "a"
            for o in (1, 2):
                assert set(np.unique(s.status(o))) <= {Status.PROPAGATED, Status.PROMPTED}
        finally:
            s.close()

    # nothing changed: nothing is computed or prompted again
    rerr = one_line(remote_track(assets, server, p, remote, capsys))
    assert f"resuming {root / 'job'} on {server.url}: {N} of {N} frames done" in rerr
    assert "prompt change" not in rerr and "nothing left to compute" in rerr
    np.testing.assert_array_equal(tifffile.imread(remote / "labels.tif"), second)

    # object 2 removed from the file: removed on the server, and from the export
    edited["objects"] = edited["objects"][:1]
    p.write_text(json.dumps(edited))
    rerr = one_line(remote_track(assets, server, p, remote, capsys))
    assert "1 prompt change(s)" in rerr and "nothing left to compute" in rerr
    left = stores(root / "job")
    assert sorted(left) == [1]
    labels = tifffile.imread(remote / "labels.tif")
    assert set(np.unique(labels)) == {0, 1}
    np.testing.assert_array_equal(labels == 1, np.stack(left[1][1]))


def test_track_server_mistakes_are_one_line(assets, server, tmp_path, capsys):
    root, vid, ck = assets
    good = tmp_path / "p.json"
    good.write_text(json.dumps(PROMPTS))
    bad = tmp_path / "bad.json"  # a frame the remote video does not have
    bad.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": N + 3, "points": [[1, 1]]}]}]}))
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    media.write_video(root / "other.mp4", N, w=W, h=H, frames=[media.frame_pattern(i, H, W, seed=2) for i in range(N)])
    outside = tmp_path / "outside.mp4"
    shutil.copy(vid, outside)
    base = ["--out", tmp_path / "out", "--checkpoint", ck, "--image-size", SIZE]

    def srv(token_file=server.token_file, url=server.url):
        return ["--server", url, "--token-file", token_file]

    cases = {
        "no server": (["track", vid, "-p", good, *srv(url=f"http://127.0.0.1:{free_port()}"), *base],
                      "127.0.0.1"),
        "outside the roots": (["track", outside, "-p", good, *srv(), *base], "outside"),
        "missing token file": (["track", vid, "-p", good, *srv(token_file=tmp_path / "nope"), *base],
                               "token file"),
        "bad prompt file": (["track", vid, "-p", bad, *srv(), *base, "--workdir", root / "bad"], f"{N + 3}"),
        "another job in --workdir": (["track", root / "other.mp4", "-p", good, *srv(), *base, "--workdir",
                                      root / "bad"], "--force"),
        "bad prompt file, uploaded": (["track", outside, "--upload", "-p", bad, *srv(), *base], f"{N + 3}"),
        "workdir without server": (["track", vid, "-p", good, *base, "--workdir", root / "x"], "--server"),
        "device with server": (["track", vid, "-p", good, *srv(), *base, "--device", "cpu"], "--device"),
    }
    for name, (argv, says) in cases.items():
        rc, err = run(argv, capsys)
        assert rc == 2, (name, err)
        lines = err.strip().splitlines()  # one line (after the upload's progress bar with --upload)
        assert lines[-1].startswith("error:") and len(lines) == 1 + ("--upload" in argv), (name, err)
        assert says in err and "Traceback" not in err, (name, err)
    assert not (tmp_path / "out").exists()
    with samtrack.connect(server.url, token_file=server.token_file) as client:
        s = client.open_session(str(vid), checkpoint=str(ck), image_size=SIZE, workdir=str(root / "bad"))
        try:
            assert s.obj_ids == []  # the bad prompt file was refused before any prompt was sent
        finally:
            s.close()
    assert [f.name for f in (server.workdir / "sessions" / "uploads").rglob("*.mp4")] == ["outside.mp4"]  # sent
    rc, err = run(["track", root / "other.mp4", "-p", good, *srv(), *base, "--workdir", root / "bad", "--force",
                   "--direction", "forward"], capsys)  # --force: the other job's folder is reset, then used
    assert rc == 0, err
    assert "resuming" not in err and sorted(stores(root / "bad")) == [1, 2]

    # the real entry point, a wrong token: one line, exit 2
    r = subprocess.run([sys.executable, "-m", "samtrack.cli", "track", str(vid), "-p", str(good), "--server",
                        server.url, "--token-file", str(wrong), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "token" in r.stderr and "Traceback" not in r.stderr


def test_apply_prompt_changes_with_finds_on_a_remote_session(assets, server, tmp_path):
    """The job's logic on a RemoteSession: object-creating prompts run once, are kept while the file keeps
    them and removed with it; the local API's errors (a SAM2 model has no text prompts)."""
    from samtrack.errors import PromptError
    from samtrack.job import apply_prompt_changes
    from samtrack.session.prompt_file import PromptSet
    from samtrack.session.prompts import Concept, Everything

    root, vid, ck = assets
    everything = (0, Everything(0.0, (("points_per_side", 4),)))  # a small grid: a fraction of a second
    local = samtrack.open_session(vid, checkpoint=ck, image_size=SIZE, device="cpu", workdir=tmp_path / "w")
    with samtrack.connect(server.url, token_file=server.token_file) as client:
        remote = client.open_session(str(vid), checkpoint=str(ck), image_size=SIZE, workdir=str(root / "finds"))
        try:
            for s in (local, remote):
                assert apply_prompt_changes(s, PromptSet([], [everything])) == 1
                assert s.concepts == [everything]
                assert apply_prompt_changes(s, PromptSet([], [everything])) == 0  # the same file: not run again
                assert s.find_objects_created() == set(s.obj_ids)
                assert apply_prompt_changes(s, PromptSet([], [])) == 1 and s.concepts == []
                with pytest.raises(PromptError, match="concept prompt"):
                    s.find_objects(0, Concept("cell"))
            with pytest.raises(PromptError, match="Concept"):
                remote.find_objects(0, "cell")
        finally:
            remote.close()
            local.close()
