"""`samtrack batch` with the local executor: a batch equals `samtrack track` on each video alone, a
worker killed with SIGKILL mid-video is replaced and the video resumes from its last completed frame,
a corrupt video fails alone, a finished batch is not tracked again, a bad manifest is refused whole.

Short generated clips at 128 px (random-init SAM2.1 tiny) keep tracking cheap; nothing waits for a
time: kills wait for frames to reach the job folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import samtrack
from tests import media
from tests import model_utils as mu

N_SHORT, N_LONG = 3, 40
KILL_AT = 4  # frames of the long video on disk before its worker is killed: a session writes its results every
# 2 s or 32 frames, so some reach the disk mid-video however fast the machine (40 > 32 + 4)
SHORT = ("a", "b", "c", "d")
OPTIONS = {"a": {}, "b": {"direction": "forward"}, "c": {"exports": "npy"}, "d": {"image_size": "128"},
           "long": {"direction": "forward"}}


# -- assets shared with test_batch_ray.py (made once per test session, kept on disk) -------------------
def _prompts(name: str, n: int) -> dict:
    objs = [{"id": 1, "name": "left", "prompts": [{"frame": 0, "points": [[30, 40]], "labels": [1]}]}]
    if name in ("a", "c"):  # a second object prompted mid-clip: tracked both ways
        objs.append({"id": 2, "name": "box", "prompts": [{"frame": n // 2, "box": [60, 30, 110, 80]}]})
    return {"objects": objs}


def _make_assets(root: Path) -> None:
    import torch
    import yaml

    from samtrack.job import run_track

    root.mkdir(parents=True, exist_ok=True)
    ck = mu.make_checkpoint(root / "ck.pt", image_size=128)
    for k, name in enumerate(SHORT + ("long",)):
        n = N_LONG if name == "long" else N_SHORT
        media.write_video(root / f"{name}.mp4", n, w=128, h=96,
                          frames=[media.frame_pattern(i, 96, 128, seed=k) for i in range(n)])
        if name == "b":
            (root / "b.yaml").write_text(yaml.safe_dump(_prompts(name, n)))
        else:
            (root / f"{name}.json").write_text(json.dumps(_prompts(name, n)))
    full = media.write_video(root / "full.mp4", 10, w=128, h=96)  # index (moov) at the end, then cut: unreadable
    media.truncate(full, root / "corrupt.mp4", 0.5)
    (root / "corrupt.json").write_text(json.dumps(_prompts("corrupt", 10)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a batch worker on this 2-core machine: 2 threads under load are 10x slower here
    try:
        for name in SHORT + ("long",):  # `samtrack track` on each video alone (its library call), a fresh model each
            prompts = root / ("b.yaml" if name == "b" else f"{name}.json")
            s = run_track(root / f"{name}.mp4", prompts, root / "ref" / name, checkpoint=ck, image_size=128,
                          device="cpu", direction=OPTIONS[name].get("direction", "both"))
            s.close()
    finally:
        torch.set_num_threads(threads)
    (root / "ready").write_text("ok")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Videos a, b, c, d (5 frames), long (16 frames), corrupt; prompt files; the checkpoint; and
    reference job folders ref/<name> from `samtrack track`'s library call on each video alone."""
    root = tmp_path_factory.getbasetemp() / "batch_assets"
    if not (root / "ready").exists():
        _make_assets(root)
    return root


def write_manifest(root: Path, path: Path, names) -> Path:
    """A CSV manifest of ``names`` (paths relative to the manifest's folder) with their OPTIONS."""
    lines = ["video,prompts,name,direction,exports,image_size"]
    for name in names:
        o = OPTIONS.get(name, {})
        prompts = "b.yaml" if name == "b" else f"{name}.json"
        rel = os.path.relpath(root, path.parent)
        lines.append(f"{rel}/{name}.mp4,{rel}/{prompts},{'dee' if name == 'd' else ''},{o.get('direction', '')},"
                     f"{o.get('exports', '')},{o.get('image_size', '')}")
    path.write_text("\n".join(lines) + "\n")
    return path


def job_name(name: str) -> str:
    return "dee" if name == "d" else name


def masks(job: Path) -> tuple[dict, dict]:
    from samtrack.job import open_results

    rs, _ = open_results(job)
    st = {o: rs.status(o) for o in rs.object_ids}
    return {(o, t): rs.mask(t, o) for o in rs.object_ids for t in range(rs.n_frames)}, st


def assert_same_masks(job: Path, ref: Path) -> None:
    (m, st), (m_ref, st_ref) = masks(job), masks(ref)
    assert sorted(st) == sorted(st_ref)
    for o in st_ref:
        np.testing.assert_array_equal(st[o], st_ref[o], err_msg=f"status of object {o}")
        assert (st[o] != 0).all()  # every frame computed (or prompted)
    for k in m_ref:
        assert m[k] is not None, k
        np.testing.assert_array_equal(m[k], m_ref[k], err_msg=f"{job.name} object/frame {k}")


def frames_on_disk(job: Path, obj: int = 1) -> int:
    import zarr

    try:
        return int((zarr.open_array(job / "results.zarr" / f"obj_{obj}" / "status", mode="r")[:] != 0).sum())
    except Exception:  # not created yet, or being replaced
        return 0


class Killer:
    """Collects a batch's events; SIGKILLs the worker tracking ``name`` (its pid comes with the
    video's first ``start`` event) once ``at`` of its ``n`` frames, but not all, are in its job folder
    (a finished session writes all of them at once: then it never kills, and the test says so)."""

    def __init__(self, name: str, job: Path, at: int, n: int = N_LONG):
        self.name, self.job, self.at, self.n = name, job, at, n
        self.events: list = []
        self.pid: int | None = None
        self.killed: int | None = None
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __call__(self, ev) -> None:
        self.events.append(ev)
        if ev.name == self.name and ev.kind == "start" and self.pid is None:
            self.pid = ev.pid

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.killed is None:
            if self.pid is not None:
                n = frames_on_disk(self.job)
                if self.at <= n < self.n:
                    self.seen = n
                    os.kill(self.pid, signal.SIGKILL)
                    self.killed = self.pid
                    return
            time.sleep(0.02)

    def starts(self, name: str | None = None) -> list:
        return [e for e in self.events if e.kind == "start" and e.name == (name or self.name)]


def check_killed_video_resumed(k: Killer, report, ref: Path) -> None:
    """The killed video took two attempts, the second resumed from the frames the first completed
    (none lost, none computed twice), and its masks equal a clean run's."""
    assert k.killed is not None, "the worker was never killed (its frames never reached the folder)"
    first, second = k.starts()[:2]
    assert first.job.frames_done == 1 and not first.job.resumed  # the prompted frame only
    assert second.pid != k.killed
    j = second.job
    assert j.resumed and k.seen <= j.frames_done < j.n_frames, (k.seen, j)
    assert j.first_frame == j.frames_done  # forward from frame 0: the next frame after the last completed one
    assert j.to_compute == j.n_frames - j.frames_done
    v = {s.name: s for s in report.videos}[k.name]
    assert v.status == "done" and v.attempts == 2 and v.resumed_from == j.frames_done
    assert v.frames_computed == j.to_compute
    assert_same_masks(Path(v.out_dir), ref)


def batch_cmd(manifest: Path, out: Path, ck: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "samtrack.cli", "batch", str(manifest), "--out", str(out), "--checkpoint", str(ck),
            "--image-size", "128", *extra]


# -- tests ------------------------------------------------------------------------------------------
def test_batch_equals_track_alone_a_corrupt_video_fails_alone_and_a_rerun_tracks_nothing(assets, tmp_path):
    from samtrack.batch import RowDefaults, run_batch

    manifest = write_manifest(assets, tmp_path / "m.csv", SHORT + ("corrupt",))
    out = tmp_path / "out"
    r = subprocess.run(batch_cmd(manifest, out, assets / "ck.pt", "--workers", "2"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 1, r.stderr  # one video failed, and the command says which
    assert "Traceback" not in r.stderr and "failed: corrupt" in r.stderr and "moov" in r.stderr, r.stderr
    assert "5 videos: 4 done, 1 failed" in r.stderr
    for name in SHORT:
        assert_same_masks(out / job_name(name), assets / "ref" / name)
    assert (out / "c" / "labels.npy").is_file() and not (out / "a" / "labels.npy").exists()  # per-row exports
    rep = json.loads((out / "batch-report.json").read_text())
    rows = {v["name"]: v for v in rep["videos"]}
    assert [v["name"] for v in rep["videos"]] == ["a", "b", "c", "dee", "corrupt"]  # manifest order
    assert rows["corrupt"]["status"] == "failed" and "cannot parse" in rows["corrupt"]["error"]
    for name in ("a", "b", "c", "dee"):
        v = rows[name]
        assert v["status"] == "done" and v["frames"] == N_SHORT and v["model_calls"] > 0
        assert 0 < v["frames_computed"] <= N_SHORT
        assert v["objects"] == (2 if name in ("a", "c") else 1) and v["peak_rss_bytes"] > 0 and v["seconds"] > 0
    csv_lines = (out / "batch-report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,status,frames,frames_computed,objects,seconds,fps,peak_rss_bytes")
    assert len(csv_lines) == 6

    # the same batch again: nothing tracked, no worker started, same exit status naming the same video
    r = subprocess.run(batch_cmd(manifest, out, assets / "ck.pt"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "failed: corrupt" in r.stderr, r.stderr
    rep = json.loads((out / "batch-report.json").read_text())
    assert rep["summary"]["workers_started"] == 0 and rep["summary"]["frames_computed"] == 0
    assert all(v["finished_before"] and v["model_calls"] == 0 for v in rep["videos"] if v["name"] != "corrupt")

    # without its finished marker, a video goes to a worker, which opens the job and computes nothing
    (out / "a" / "batch.json").unlink()
    rep = run_batch(manifest, out, only=["a"], workers=1,
                    defaults=RowDefaults(checkpoint=str(assets / "ck.pt"), image_size=128))
    (a,) = rep.videos
    assert rep.workers_started == 1 and not a.finished_before and a.status == "done"
    assert a.model_calls == 0 and a.frames_computed == 0
    assert_same_masks(out / "a", assets / "ref" / "a")


def test_a_worker_killed_mid_video_is_replaced_and_the_video_resumes(assets, tmp_path):
    from samtrack.batch import RowDefaults, run_batch

    manifest = write_manifest(assets, tmp_path / "m.csv", ("long", "b"))
    out = tmp_path / "out"
    with Killer("long", out / "long", KILL_AT) as k:
        report = run_batch(manifest, out, workers=2, progress=k,
                           defaults=RowDefaults(checkpoint=str(assets / "ck.pt"), image_size=128))
    assert [v.status for v in report.videos] == ["done", "done"]
    assert any(e.kind == "retry" and e.name == "long" and "signal 9" in e.error for e in k.events)
    check_killed_video_resumed(k, report, assets / "ref" / "long")
    assert_same_masks(out / "b", assets / "ref" / "b")
    assert report.workers_started == 3  # two, and one in place of the killed one


def test_a_bad_manifest_is_refused_whole_with_one_line_per_bad_row(assets, tmp_path):
    bad_prompts = tmp_path / "outside.json"
    bad_prompts.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, "points": [[500, 1]]}]}]}))
    a = assets / "a.mp4"
    rows = [f"{a},{assets / 'a.json'},,,",  # row 1: fine
            f"{tmp_path / 'missing.mp4'},{assets / 'a.json'},,,",  # row 2
            f"{a},{bad_prompts},a2,,",  # row 3
            f"{a},{assets / 'a.json'},a3,sideways,",  # row 4
            f"{a},{assets / 'a.json'},,,"  # row 5: the name a again
            , f"{a},{assets / 'a.json'},a5,,gif"]  # row 6
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,prompts,name,direction,exports\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = subprocess.run(batch_cmd(manifest, out, assets / "ck.pt"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    text = r.stderr
    assert "5 problem(s) in 5 row(s); nothing was run" in text
    for expect in ("row 2 (missing): video", "not found", "row 3 (a2): ", "outside", "row 4 (a3): direction",
                   "row 5 (a): name 'a' is also row 1's", "row 6 (a5): export 'gif'"):
        assert expect in text, (expect, text)
    assert "\n  row 1 " not in text  # the good row is not listed
    assert not out.exists()  # nothing was run

    from samtrack.batch import ManifestError, RowDefaults, load_manifest

    with pytest.raises(ManifestError) as e:
        load_manifest(manifest, out, defaults=RowDefaults(checkpoint=str(assets / "ck.pt")))
    assert [p.split(":")[0] for p in e.value.problems] == ["row 2 (missing)", "row 3 (a2)", "row 4 (a3)",
                                                           "row 5 (a)", "row 6 (a5)"]


def test_yaml_and_folder_manifests(assets, tmp_path, monkeypatch):
    import shutil

    import yaml

    from samtrack.batch import ManifestError, RowDefaults, load_manifest

    ck = str(assets / "ck.pt")
    y = tmp_path / "m.yaml"
    y.write_text(yaml.safe_dump({"defaults": {"image_size": 128, "exports": ["npy", "tiff"]},
                                 "videos": [{"video": str(assets / "a.mp4"), "prompts": str(assets / "a.json")},
                                            {"video": str(assets / "b.mp4"), "prompts": str(assets / "b.yaml"),
                                             "direction": "forward", "name": "bee", "exports": []}]}))
    m = load_manifest(y, tmp_path / "out", defaults=RowDefaults(checkpoint=ck))
    a, b = m.jobs
    assert (a.name, a.image_size, a.exports, a.direction, a.n_frames) == ("a", 128, ("npy", "tiff"), "both", N_SHORT)
    assert (b.name, b.exports, b.direction) == ("bee", (), "forward")
    assert b.out_dir == str((tmp_path / "out" / "bee").resolve()) and a.key != b.key

    folder = tmp_path / "videos"
    (folder / "prompts").mkdir(parents=True)
    for name in ("a", "c"):
        shutil.copy(assets / f"{name}.mp4", folder)
    shutil.copy(assets / "a.json", folder)
    shutil.copy(assets / "c.json", folder / "prompts")
    monkeypatch.chdir(tmp_path)  # a relative folder
    m = load_manifest(Path("videos"), Path("out"), defaults=RowDefaults(checkpoint=ck))
    assert [(j.name, Path(j.prompts).name) for j in m.jobs] == [("a", "a.json"), ("c", "c.json")]
    assert m.jobs[0].video == str(folder / "a.mp4") and m.jobs[1].prompts == str(folder / "prompts" / "c.json")
    shutil.copy(assets / "d.mp4", folder)  # a video without its prompt file
    with pytest.raises(ManifestError, match=r"row 3 \(d\): no prompt file d.json"):
        load_manifest(folder, tmp_path / "out", defaults=RowDefaults(checkpoint=ck))


def test_the_live_table_shows_running_frames_failures_and_an_eta():
    from rich.console import Console

    from samtrack.batch import JobProgress, VideoEvent, VideoSummary
    from samtrack.batch.board import BatchBoard

    board = BatchBoard([("a", 10), ("b", 10), ("c", 10)])
    board.update(VideoEvent("a", "start", total=10, worker="local-0 (cpu)", pid=1,
                            job=JobProgress(True, 10, 4, 6, 4, 10)))
    for done in (1, 3):
        board.update(VideoEvent("a", "progress", done=done, total=10))
    board.update(VideoEvent("b", "failed", error="b.mp4: FFmpeg cannot parse this file"))
    board.update(VideoEvent("c", "done", summary=VideoSummary("c", "c.mp4", "out/c", "done", 10, 9, 2)))
    console = Console(record=True, width=160)
    console.print(board)
    text = console.export_text()
    assert "3 of 10" in text and "resumed at 4/10" in text and "cannot parse" in text and "2 object(s)" in text
    assert "queued 0 · running 1 · done 1 · failed 1" in text and "ETA" in text


def test_only_the_ray_executor_imports_ray_and_only_when_a_batch_runs_on_it():
    import ast

    import samtrack

    root = Path(samtrack.__file__).parent
    found = []
    for p in sorted(root.rglob("*.py")):
        tree = ast.parse(p.read_text(), str(p))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(m.split(".")[0] == "ray" for m in mods):
                found.append((p.relative_to(root).as_posix(), id(node) in top))
    assert found and {f for f, _ in found} == {"batch/ray_executor.py"}, found
    assert not any(at_top for _, at_top in found)  # imported inside functions only
    code = ("import sys, importlib, pkgutil\n"
            "import samtrack.cli, samtrack.job, samtrack.io, samtrack.memory, samtrack.session, samtrack.batch\n"
            "for m in pkgutil.walk_packages(samtrack.batch.__path__, 'samtrack.batch.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_a_folder_holding_another_job_or_no_job_fails_that_video_saying_what_to_do(assets, tmp_path):
    import shutil

    from samtrack.batch import RowDefaults, load_manifest
    from samtrack.batch.worker import ModelCache, run_job

    m = load_manifest(write_manifest(assets, tmp_path / "m.csv", ("a", "b")), tmp_path / "out",
                      defaults=RowDefaults(checkpoint=str(assets / "ck.pt"), image_size=128))
    a, b = m.jobs
    shutil.copytree(assets / "ref" / "b", a.out_dir)  # a's folder holds b's job
    Path(b.out_dir).mkdir(parents=True)
    (Path(b.out_dir) / "notes.txt").write_text("mine")  # b's folder is someone's own folder
    models = ModelCache("cpu")
    sa, sb = (run_job(j, models, lambda ev: None) for j in (a, b))
    assert sa.status == "failed" and "holds another job's results" in sa.error and "another `name`" in sa.error
    assert "source" in sa.error and "--force" not in sa.error
    assert sb.status == "failed" and "is not a samtrack job folder" in sb.error
    assert (Path(b.out_dir) / "notes.txt").read_text() == "mine" and sorted(os.listdir(b.out_dir)) == ["notes.txt"]


def test_a_row_whose_folder_another_session_has_open_fails_alone_saying_what_to_do(assets, tmp_path):
    from samtrack.batch import RowDefaults, load_manifest
    from samtrack.batch.worker import ModelCache, run_job
    from samtrack.io.folder_lock import FolderLock

    m = load_manifest(write_manifest(assets, tmp_path / "m.csv", ("a",)), tmp_path / "out",
                      defaults=RowDefaults(checkpoint=str(assets / "ck.pt"), image_size=128))
    (a,) = m.jobs
    with FolderLock(a.out_dir).acquire(purpose="samtrack view (a test)"):
        s = run_job(a, ModelCache("cpu"), lambda ev: None)
    assert s.status == "failed" and "is in use by another session of this process" in s.error
    assert "run this row again once it is closed" in s.error and "another `name`" in s.error
    assert "another work folder" not in s.error and not (Path(a.out_dir) / "results.zarr").exists()


def test_batch_features_precomputes_every_frame_and_a_later_correction_encodes_none(assets, tmp_path):
    import dataclasses

    from samtrack.batch import RowDefaults, load_manifest
    from samtrack.batch.worker import ModelCache, run_job

    m = load_manifest(write_manifest(assets, tmp_path / "m.csv", ("long",)), tmp_path / "out",
                      defaults=RowDefaults(checkpoint=str(assets / "ck.pt"), image_size=128, features=True))
    (job,) = m.jobs
    assert job.features and job.key == dataclasses.replace(job, features=False).key  # results do not depend on it
    models = ModelCache("cpu")
    summary = run_job(job, models, lambda ev: None)
    assert summary.status == "done", summary.error
    backend = models.get(job)
    s = samtrack.open_session(job.video, workdir=job.out_dir, backend=backend)
    try:
        assert s.features is not None and s.features.cached_frames == s.n_frames == job.n_frames
        encoded = []
        real = backend.encode_image
        backend.encode_image = lambda x, f: (encoded.append(f), real(x, f))[1]
        try:
            (oid,) = s.obj_ids[:1]
            s.add_points(job.n_frames // 2, oid, [[30, 30]], [1])
            assert sum(1 for _ in s.propagate("both")) > 0
        finally:
            backend.encode_image = real
        assert encoded == []  # every frame's features came from the job folder
    finally:
        s.close()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_worker_stops_on_sigint_or_sigterm_also_when_the_batch_was_started_with_sigint_ignored(sig):
    """A batch run from a script in the background (`&`, nohup, a cluster job) has SIGINT ignored, and
    its worker processes inherit that; SIGINT is how the batch stops a busy worker with its session
    closed, so a worker takes Ctrl-C's handler itself. SIGTERM (a cluster's time limit signals every
    process of the job) is handled the same way. Before: the worker ran on after SIGINT until
    terminated, and SIGTERM ended it at once, its session not closed (exit code -15)."""
    import multiprocessing as mp

    from samtrack.batch.local import _worker_main

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the worker inherits
    try:
        proc = ctx.Process(target=_worker_main, args=(child, 0, "cpu", 1))
        proc.start()
    finally:
        signal.signal(signal.SIGINT, before)
    child.close()  # the worker's end: a worker dying before "ready" then ends the poll at once
    try:
        assert parent.poll(300) and parent.recv()[0] == "ready"
        os.kill(proc.pid, getattr(signal, sig))
        proc.join(120)
        assert not proc.is_alive() and proc.exitcode == 0  # KeyboardInterrupt: ended quietly
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
