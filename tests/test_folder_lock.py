"""One writer per session folder: a second session on a folder is refused with the holder named, a crash
never leaves a folder locked, and nothing that removes results (``track --force``, ``caches clean``) runs
under a session that has the folder open."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import samtrack
from samtrack.caches import CacheEntry, remove
from samtrack.errors import InvalidOptionError, SessionInUseError
from samtrack.io.folder_lock import FolderLock, folder_in_use, read_owner
from samtrack.io.result_store import Status
from samtrack.session.backends.fake import FakeBackend
from tests import media

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 8


@pytest.fixture
def vid(tmp_path):
    return media.write_video(tmp_path / "v.mp4", N, w=64, h=48)


def _open(vid, workdir):
    return samtrack.open_session(vid, backend=FakeBackend(64), workdir=workdir)


def test_a_second_session_on_a_folder_is_refused_and_the_first_keeps_its_work(vid, tmp_path):
    a = _open(vid, tmp_path / "w")
    try:
        a.add_box(0, 1, [5, 5, 30, 30])
        list(a.propagate("forward"))
        with pytest.raises(SessionInUseError, match="another session of this process") as e:
            _open(vid, tmp_path / "w")
        assert e.value.holder["pid"] == os.getpid()
        a.add_box(2, 2, [10, 10, 40, 40])  # the first session goes on as if nothing happened
    finally:
        a.close()
    assert folder_in_use(tmp_path / "w") is None
    with _open(vid, tmp_path / "w") as c:  # closed: the folder opens again, with everything the first wrote
        assert c.obj_ids == [1, 2]
        assert (c.results.status(1) == Status.PROPAGATED).sum() == N - 1


def test_a_session_of_this_process_dropped_without_close_does_not_keep_the_folder(vid, tmp_path, caplog):
    """A notebook cell re-run, a function that forgot close(): the old session is unreachable but, in a
    reference cycle, not collected yet. The new open collects it instead of refusing, and says so."""
    import gc

    gc.disable()  # no collection but the one the open makes
    try:
        a = _open(vid, tmp_path / "w")
        a.add_box(0, 1, [5, 5, 30, 30])
        a.flush()
        a.itself = a  # reachable from nothing but itself
        del a
        with _open(vid, tmp_path / "w") as b:
            assert b.obj_ids == [1]
    finally:
        gc.enable()
    assert "dropped without close()" in caplog.text
    held = _open(vid, tmp_path / "w")  # a session still referenced is never taken over
    try:
        with pytest.raises(SessionInUseError, match="another session of this process"):
            _open(vid, tmp_path / "w")
    finally:
        held.close()


def test_a_session_that_fails_to_open_leaves_the_folder_free(vid, tmp_path):
    w = tmp_path / "w"
    with pytest.raises(SessionInUseError):
        with FolderLock(w):
            _open(vid, w)
    with pytest.raises(samtrack.errors.SourceNotFoundError):
        _open(tmp_path / "missing.mp4", w)
    assert folder_in_use(w) is None
    _open(vid, w).close()


def test_a_work_folder_that_cannot_be_a_folder_is_a_typed_error(vid, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidOptionError, match="is a file, not a folder"):
        _open(vid, tmp_path / "f")
    with pytest.raises(InvalidOptionError, match="lies under a file"):
        _open(vid, tmp_path / "f" / "sub")


_HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import samtrack
    from samtrack.session.backends.fake import FakeBackend
    s = samtrack.open_session({vid!r}, backend=FakeBackend(64), workdir={w!r})
    s.add_box(0, 1, [5, 5, 30, 30])
    for _ in s.propagate("forward"):
        pass
    s.flush()
    print("ready", flush=True)
    sys.stdin.read()  # held until killed
""")


def test_another_process_is_named_and_its_crash_frees_the_folder(vid, tmp_path):
    w = tmp_path / "w"
    code = _HOLDER.format(root=ROOT, vid=str(vid), w=str(w))
    p = subprocess.Popen([sys.executable, "-c", code, "holder-of-the-folder"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(SessionInUseError) as e:
            _open(vid, w)
        msg = str(e.value)
        assert f"process {p.pid}" in msg and "holder-of-the-folder" in msg and "another work folder" in msg
        assert e.value.holder["pid"] == p.pid and folder_in_use(w)["pid"] == p.pid
        # the library's open_video with other reader options would rebuild the holder's frame cache under it
        sig = json.loads((w / "frames.zarr" / "zarr.json").read_text())["attributes"]["signature"]
        with pytest.raises(SessionInUseError, match=f"process {p.pid}"):
            samtrack.open_video(vid, workdir=w, reader="decord")
        assert json.loads((w / "frames.zarr" / "zarr.json").read_text())["attributes"]["signature"] == sig
        with samtrack.open_video(vid, workdir=w) as fs:  # the same options: read, nothing rebuilt
            assert len(fs) == N and fs.read(3).shape == (48, 64, 3)
    finally:
        p.send_signal(signal.SIGKILL)  # a crash: no close, no release
        p.wait()
    with _open(vid, w) as s:  # the operating system dropped the lock with the process
        assert s.obj_ids == [1] and (s.results.status(1) == Status.PROPAGATED).sum() == N - 1
        assert read_owner(w)["pid"] == os.getpid()  # the stale record was replaced


def test_open_session_refuses_before_loading_a_model(vid, tmp_path, monkeypatch):
    import samtrack.session.backends as backends

    def no_model(*a, **k):
        raise AssertionError("a model was loaded for a folder in use")

    monkeypatch.setattr(backends, "load_backend", no_model)
    with FolderLock(tmp_path / "w"):
        with pytest.raises(SessionInUseError):
            samtrack.open_session(vid, model="sam2.1_hiera_tiny", checkpoint="untrained", image_size=64, device="cpu",
                                  workdir=tmp_path / "w")


def test_track_force_on_a_job_in_use_removes_nothing(vid, tmp_path):
    from samtrack.job import start_track

    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, "box": [5, 5, 30, 30]}]}]}))
    out = tmp_path / "job"
    with _open(vid, out) as a:
        a.add_box(0, 1, [5, 5, 30, 30])
        list(a.propagate("forward"))
        a.flush()
        with pytest.raises(SessionInUseError):
            start_track(vid, prompts, out, backend=FakeBackend(64), force=True)
        assert (out / "results.zarr").is_dir() and (out / "memory.zarr").is_dir()
        assert (a.results.status(1) == Status.PROPAGATED).sum() == N - 1
    with _open(vid, out) as s:
        assert (s.results.status(1) == Status.PROPAGATED).sum() == N - 1


def test_cli_track_on_a_folder_in_use_is_one_line_and_exit_2(vid, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, "box": [5, 5, 30, 30]}]}]}))
    with FolderLock(tmp_path / "job").acquire(purpose="a test holding the folder"):
        r = subprocess.run([sys.executable, "-m", "samtrack.cli", "track", str(vid), "-p", str(prompts), "-o",
                            str(tmp_path / "job"), "--checkpoint", "untrained", "--image-size", "64", "--device", "cpu"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env=dict(os.environ, SAMTRACK_CACHE_DIR=str(tmp_path / "cache")))
    text = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "Traceback" not in text, text
    assert "is in use by process" in text and str(os.getpid()) in text, text


def test_cli_cache_into_a_job_folder_in_use_is_refused(vid, tmp_path):
    """``samtrack cache VIDEO --workdir job`` while a session writes the job: other reader options would
    recreate the frame cache under it."""
    with FolderLock(tmp_path / "job").acquire(purpose="a test holding the folder"):
        r = subprocess.run([sys.executable, "-m", "samtrack.cli", "cache", str(vid), "--workdir", str(tmp_path / "job")],
                           capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env=dict(os.environ, SAMTRACK_CACHE_DIR=str(tmp_path / "cache")))
        text = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2 and "is in use by process" in text and "Traceback" not in text, text
        assert not (tmp_path / "job" / "frames.zarr").exists()


def test_caches_clean_keeps_a_session_folder_in_use(vid, tmp_path):
    folder = tmp_path / "cache" / "sessions" / "k"
    s = _open(vid, folder)
    entry = CacheEntry("sessions", folder, 1000, 0.0, str(vid))
    try:
        freed, in_use = remove([entry])
        assert (freed, in_use) == (0, [entry]) and (folder / "results.zarr").is_dir()
    finally:
        s.close()
    freed, in_use = remove([entry])
    assert (freed, in_use) == (1000, []) and not folder.exists()


def test_a_session_opened_while_caches_clean_removes_its_folder_keeps_its_work(vid, tmp_path, monkeypatch):
    """``caches clean`` removes a session folder holding its lock; the lock file is one of the files it removes.
    Removed in place, an opener arriving once the lock file was gone (rmtree takes a folder's entries in any
    order) took a new lock file in the same folder, opened a second 'holder', and the rest of the removal
    deleted that session's files under it. The opener here arrives at that moment (the lock file removed
    first, then the session opened, then the rest of the removal): its session must keep its work."""
    import shutil

    import samtrack.caches as caches
    from samtrack.io.folder_lock import LOCK_NAME

    folder = tmp_path / "cache" / "sessions" / "k"
    _open(vid, folder).close()
    real_rmtree = shutil.rmtree
    opened, calls = [], []

    def rmtree_with_an_opener_arriving(path, *a, **kw):
        if calls:  # shutil is shared: other removals (the opener's own) run as they are
            return real_rmtree(path, *a, **kw)
        calls.append(path)
        os.unlink(os.path.join(path, LOCK_NAME))  # the removal has reached the lock file
        s = _open(vid, folder)  # a session opened on the cache folder meanwhile
        s.add_box(0, 1, [5, 5, 30, 30])
        s.flush()
        opened.append(s)
        real_rmtree(path, *a, **kw)  # the rest of the removal

    monkeypatch.setattr(caches.shutil, "rmtree", rmtree_with_an_opener_arriving)
    freed, in_use = remove([CacheEntry("sessions", folder, 1000, 0.0, str(vid))])
    monkeypatch.setattr(caches.shutil, "rmtree", real_rmtree)
    assert len(opened) == 1 and in_use == []
    s = opened[0]
    list(s.propagate("forward"))
    s.close()
    with _open(vid, folder) as again:
        assert again.obj_ids == [1] and (again.results.status(1) == Status.PROPAGATED).sum() == N - 1


def test_a_folder_lock_not_held_or_of_another_folder_is_refused_not_a_way_around_the_rule(vid, tmp_path):
    """``open_session(folder_lock=...)`` hands an already taken lock to the session. One never taken, or another
    folder's, opened the workdir with no lock at all: a second session then opened it too (two writers)."""
    w = tmp_path / "w"
    with pytest.raises(InvalidOptionError, match="is not held"):
        samtrack.open_session(vid, backend=FakeBackend(64), workdir=w, folder_lock=FolderLock(w))
    other = FolderLock(tmp_path / "other").acquire()
    with pytest.raises(InvalidOptionError, match="not of"):
        samtrack.open_session(vid, backend=FakeBackend(64), workdir=w, folder_lock=other)
    assert not other.held  # given to the session, released when opening failed (as documented)
    assert folder_in_use(w) is None and folder_in_use(tmp_path / "other") is None
    mine = FolderLock(w).acquire()
    with samtrack.open_session(vid, backend=FakeBackend(64), workdir=str(w) + "/", folder_lock=mine):
        with pytest.raises(SessionInUseError):  # the session holds its folder
            _open(vid, w)
    assert folder_in_use(w) is None
