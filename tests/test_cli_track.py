"""`samtrack track`: prompt-file errors, SIGKILL mid-run then resume == an uninterrupted run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import media
from tests import model_utils as mu

N = 40


@pytest.fixture(scope="module")
def job_assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("track")
    ck = mu.make_checkpoint(tmp / "ck.pt", image_size=128)
    vid = media.write_video(tmp / "v.mp4", N, w=128, h=96)
    prompts = tmp / "prompts.json"
    prompts.write_text(json.dumps({"objects": [
        {"id": 1, "name": "a", "prompts": [{"frame": 0, "points": [[30, 40]], "labels": [1]}]},
        {"id": 2, "name": "b", "prompts": [{"frame": 20, "box": [60, 30, 110, 80]}]}]}))
    return tmp, ck, vid, prompts


def track_cmd(vid, prompts, out, ck, *extra):
    return [sys.executable, "-m", "samtrack.cli", "track", str(vid), "--prompts", str(prompts), "--out", str(out),
            "--checkpoint", str(ck), "--image-size", "128", "--device", "cpu", *extra]


def masks(out: Path) -> dict:
    from samtrack.job import open_results

    rs, _ = open_results(out)
    return {(o, t): rs.mask(t, o) for o in rs.object_ids for t in range(N)}, {o: rs.status(o) for o in rs.object_ids}


def test_killed_track_resumes_to_the_same_result(job_assets):
    tmp, ck, vid, prompts = job_assets
    ref, kill = tmp / "ref", tmp / "killed"
    r = subprocess.run(track_cmd(vid, prompts, ref, ck), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(track_cmd(vid, prompts, kill, ck), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def tracked_on_disk() -> int:  # frames whose status reached the disk (any storage layout)
        import zarr

        try:
            return int((zarr.open_array(kill / "results.zarr" / "obj_1" / "status", mode="r")[:] != 0).sum())
        except Exception:  # not created yet, or being replaced
            return 0

    media.kill_when(proc, lambda: tracked_on_disk() >= 12, poll=0.05)
    _, st_killed = masks(kill)
    assert (st_killed[1] == 0).any()  # it really stopped midway
    r = subprocess.run(track_cmd(vid, prompts, kill, ck), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (m_ref, st_ref), (m_kill, st_kill) = masks(ref), masks(kill)
    for o in st_ref:
        np.testing.assert_array_equal(st_kill[o], st_ref[o])
    for k in m_ref:
        np.testing.assert_array_equal(m_kill[k], m_ref[k], err_msg=str(k))


def test_other_job_in_out_dir_needs_force(job_assets, tmp_path):
    _, ck, _, _ = job_assets
    n = 6  # short clips: this is about identity, not tracking
    vid = media.write_video(tmp_path / "v.mp4", n, w=128, h=96)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, "points": [[30, 40]]}]}]}))
    out = tmp_path / "job"
    assert subprocess.run(track_cmd(vid, prompts, out, ck, "--direction", "forward"), capture_output=True).returncode == 0
    other = media.write_video(tmp_path / "other.mp4", n, w=128, h=96,
                              frames=[media.frame_pattern(i, 96, 128, seed=2) for i in range(n)])
    r = subprocess.run(track_cmd(other, prompts, out, ck), capture_output=True, text=True)
    assert r.returncode == 2 and "--force" in r.stderr and "another video" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(track_cmd(other, prompts, out, ck, "--force"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


BAD = {
    "missing id": {"objects": [{"prompts": [{"frame": 0, "points": [[1, 1]]}]}]},
    "frame out of range": {"objects": [{"id": 1, "prompts": [{"frame": 99, "points": [[1, 1]]}]}]},
    "point outside": {"objects": [{"id": 1, "prompts": [{"frame": 0, "points": [[500, 1]], "labels": [1]}]}]},
    "box inverted": {"objects": [{"id": 1, "prompts": [{"frame": 0, "box": [50, 50, 10, 10]}]}]},
    "mask missing": {"objects": [{"id": 1, "prompts": [{"frame": 0, "mask": "nope.png"}]}]},
    "mask wrong size": {"objects": [{"id": 1, "prompts": [{"frame": 0, "mask": "small.png"}]}]},
    "duplicate ids": {"objects": [{"id": 1, "prompts": [{"frame": 0, "points": [[1, 1]]}]},
                                  {"id": 1, "prompts": [{"frame": 1, "points": [[1, 1]]}]}]},
}
EXPECT = {"missing id": "missing \"id\"", "frame out of range": "out of range", "point outside": "outside",
          "box inverted": "inverted", "mask missing": "not found", "mask wrong size": "video is 128x96",
          "duplicate ids": "duplicate id 1"}


def _track_in_process(cmd: list, capsys) -> tuple[int, str]:
    """``samtrack track`` through the CLI's own entry point (``samtrack.cli.main``, what ``python -m
    samtrack.cli`` runs) in this process: its exit status and what it printed on stderr. An exception
    main() does not turn into an exit status propagates and fails the test, as a traceback would."""
    import logging

    from samtrack.cli import main

    assert cmd[:3] == [sys.executable, "-m", "samtrack.cli"]
    export_log, root = logging.getLogger("samtrack.io.export"), logging.getLogger()
    saved = export_log.level, root.level, list(root.handlers)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as e:
            main(cmd[3:])
    finally:  # main() configures logging for a process of its own
        export_log.setLevel(saved[0])
        root.setLevel(saved[1])
        root.handlers[:] = saved[2]
    return e.value.code, capsys.readouterr().err


# one case as a real `samtrack` process (what a user runs); the others call the same entry point in
# this process, which saves a Python + torch start (~2 s) per case and reads the same stderr and status
IN_A_SUBPROCESS = {"mask wrong size"}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_prompt_files_give_one_readable_line(job_assets, tmp_path, case, capsys):
    from PIL import Image

    tmp, ck, vid, _ = job_assets
    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    p = tmp_path / "p.json"
    p.write_text(json.dumps(BAD[case]))
    cmd = track_cmd(vid, p, tmp_path / "out", ck)
    if case in IN_A_SUBPROCESS:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        code, err = r.returncode, r.stderr
    else:
        code, err = _track_in_process(cmd, capsys)
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    assert text.startswith("error:") and EXPECT[case] in text, text


@pytest.mark.parametrize("sig,rc,note", [("SIGINT", 130, "interrupted:"), ("SIGTERM", 143, "terminated (SIGTERM):")])
def test_ctrl_c_and_sigterm_stop_track_saying_so_and_the_job_resumes(job_assets, sig, rc, note):
    """Ctrl-C and SIGTERM (`kill PID`, a cluster's time limit or scancel) close the session: exit status
    130 / 143 and a one-line note, no traceback; the same command then finishes the job. Before: SIGTERM
    killed Python at once (nothing closed), and Ctrl-C exited 130 without the note (typer >= 0.20 returns
    it as an exit code)."""
    import signal
    import time

    tmp, ck, vid, prompts = job_assets
    out = tmp / f"stopped-{sig}"
    # Ctrl-C's handler in the child also where this test process inherited SIGINT ignored (run with `&`):
    # a Python handler here is the default action in the child, where Python installs its own
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(track_cmd(vid, prompts, out, ck), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    finally:
        signal.signal(signal.SIGINT, before)

    def tracked_on_disk() -> int:
        import zarr

        try:
            return int((zarr.open_array(out / "results.zarr" / "obj_1" / "status", mode="r")[:] != 0).sum())
        except Exception:  # not created yet, or being replaced
            return 0

    deadline = time.time() + 300
    while proc.poll() is None and tracked_on_disk() < 6 and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "track finished before it could be stopped; give it more work"
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == rc, (proc.returncode, stdout, stderr)
    assert note in stdout + stderr and "Traceback" not in stdout + stderr
    _, status = masks(out)
    assert (status[1] != 0).sum() >= 6 and (status[1] == 0).any()  # the frames done are kept; it stopped midway
    r = subprocess.run(track_cmd(vid, prompts, out, ck), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    _, status = masks(out)
    assert all((st != 0).all() for st in status.values())
