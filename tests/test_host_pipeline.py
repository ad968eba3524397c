"""The host side of the tracking loop (issue 12): model inputs prepared ahead on a background
thread, results handed out without copies yet never shared with the stores, queued masks encoded."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import samtrack
from samtrack.errors import DecodeError, PromptError
from samtrack.io.result_store import ResultStore, Status
from samtrack.session.backends.fake import FakeBackend
from tests import media
from tests import model_utils as mu

N = 16


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host")
    return mu.make_checkpoint(tmp / "ck.pt", image_size=128), media.write_video(tmp / "v.mp4", N, w=128, h=96)


def _open(assets, workdir):
    ck, vid = assets
    return samtrack.open_session(vid, checkpoint=ck, image_size=128, device="cpu", workdir=workdir)


def _record_threads(s) -> list[tuple[int, str]]:
    """Which thread prepared each frame's model input."""
    seen, real = [], s._host_input

    def host_input(f):
        seen.append((f, threading.current_thread().name))
        return real(f)

    s._host_input = host_input
    return seen


def test_prefetched_inputs_give_the_same_logits_and_leave_the_tracking_thread(assets, tmp_path, monkeypatch):
    runs = {}
    for name in ("prefetch", "inline"):
        s = _open(assets, tmp_path / name)
        try:
            if name == "inline":
                s._prefetch_input = lambda f: None
            s.add_points(0, 1, [[64, 48]], [1])
            seen = _record_threads(s)
            runs[name] = ({r.frame_idx: r.logits.copy() for r in s.propagate("forward")}, seen)
        finally:
            s.close()
        assert not any(t.name.startswith("samtrack-input") for t in threading.enumerate())  # close stopped it
    (pre, seen_pre), (inl, seen_inl) = runs["prefetch"], runs["inline"]
    assert sorted(pre) == sorted(inl) == list(range(N))  # the keyframe, then every frame after it
    for f in pre:
        np.testing.assert_array_equal(pre[f], inl[f])  # the same input, prepared elsewhere: bit-identical
    assert sorted(f for f, _ in seen_pre) == list(range(1, N))  # each frame prepared once (0: at the click)
    assert all(t.startswith("samtrack-input") for _, t in seen_pre), seen_pre
    assert all(t == threading.current_thread().name for _, t in seen_inl)


def test_a_frame_that_fails_to_read_ahead_fails_at_that_frame_with_the_earlier_ones_kept(tmp_path):
    vid = media.write_video(tmp_path / "v.mp4", 12, w=96, h=64)
    s = samtrack.open_session(vid, backend=FakeBackend(64), workdir=tmp_path / "w")
    try:
        s.add_box(0, 1, [10, 10, 50, 40])
        real = s.frames.read

        def read(i):
            if i == 6:
                raise DecodeError("frame 6 cannot be decoded (test)", frame=6)
            return real(i)

        s.frames.read = read
        got = []
        with pytest.raises(DecodeError, match="frame 6"):
            for r in s.propagate("forward"):
                got.append(r.frame_idx)
        assert got == [0, 1, 2, 3, 4]  # frame 5 was in flight: stored, not yielded
        status = s.results.status(1)
        assert (status[1:6] == Status.PROPAGATED).all() and (status[6:] == Status.NOT_RUN).all()
    finally:
        s.close()


def test_a_feature_store_write_that_fails_while_encoding_ahead_is_raised_at_that_step(tmp_path):
    """Frame f+1 is encoded right after frame f's step is launched, and its features are written to
    the store then (on the CPU at once; on a GPU when the copy to the host is done, at the next
    encode). A failing write is not lost there, nor raised there, where frame f's results would be
    lost: it is raised when frame f+1's step starts, with every earlier frame stored."""
    vid = media.write_video(tmp_path / "v.mp4", 12, w=96, h=64)
    s = samtrack.open_session(vid, backend=FakeBackend(64), workdir=tmp_path / "w")
    try:
        assert s.features is not None
        s.add_box(0, 1, [10, 10, 50, 40])
        put = s.features.put

        def failing_put(f, *a, **kw):
            if f == 5:
                raise OSError(28, "No space left on device (test)")
            return put(f, *a, **kw)

        s.features.put = failing_put
        got = []
        with pytest.raises(OSError, match="No space left"):
            for r in s.propagate("forward"):
                got.append(r.frame_idx)
        assert got == [0, 1, 2, 3]  # frame 4 was in flight when frame 5 was encoded: stored, not yielded
        status = s.results.status(1)
        assert (status[1:5] == Status.PROPAGATED).all() and (status[5:] == Status.NOT_RUN).all()
        s.features.put = put
        list(s.propagate("forward"))  # the next call goes on from frame 5
        assert (s.results.status(1)[1:] == Status.PROPAGATED).all()
    finally:
        s.close()


def test_results_handed_out_are_not_the_stored_masks(assets, tmp_path):
    s = _open(assets, tmp_path / "w")
    try:
        s.add_box(0, 1, [20, 20, 70, 70])
        s.add_box(0, 2, [60, 30, 120, 90])
        results = list(s.propagate("forward"))
        for r in results[:3]:
            assert r.masks.shape == (2, 96, 128) and r.masks.dtype == bool
            np.testing.assert_array_equal(r.masks, r.logits > 0)
        kept = {(r.frame_idx, o): r.masks[k].copy() for r in results for k, o in enumerate(r.obj_ids)}
        assert any(m.any() for m in kept.values())
        for r in results:  # a user's in-place edits...
            r.masks[...] = ~r.masks
            r.logits[...] = 0
        for (f, o), m in kept.items():  # ...change neither the queued nor, after the flush, the stored masks
            np.testing.assert_array_equal(s.results.mask(f, o), m)
        s.flush()
        for (f, o), m in kept.items():
            np.testing.assert_array_equal(s.results.mask(f, o), m)
        again = s.frame_result(5)
        np.testing.assert_array_equal(again.masks, np.stack([kept[(5, 1)], kept[(5, 2)]]))
    finally:
        s.close()


def test_a_queued_mask_is_the_store_own_copy(tmp_path):
    rs = ResultStore(tmp_path / "r.zarr", n_frames=40, height=270, width=480)
    rs.add_object(1)
    rng = np.random.default_rng(0)
    given = {f: rng.random((270, 480)) > 0.7 for f in range(0, 40, 3)}
    given[9][:] = False  # an empty mask (stored as no bytes)
    for f, m in given.items():
        rs.write(f, 1, m, status=Status.PROPAGATED, object_score=1.0, iou=0.5, source=0)
    expect = {f: m.copy() for f, m in given.items()}
    for m in given.values():  # the caller reuses its buffers after writing
        m[...] = True
    for f, m in expect.items():
        np.testing.assert_array_equal(rs.mask(f, 1), m)  # queued, not written yet
    rs.flush()
    reopened = ResultStore(tmp_path / "r.zarr", n_frames=40, height=270, width=480)
    for f, m in expect.items():
        np.testing.assert_array_equal(reopened.mask(f, 1), m)
    assert reopened.mask(1, 1) is None


def _openmp() -> bool:
    import torch

    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def test_the_prefetch_thread_runs_torch_on_itself_alone_and_tracking_keeps_its_threads(assets, tmp_path):
    """A background thread that once ran a parallel torch op keeps an OpenMP team while it lives, which
    slowed the tracking thread's steps by 10-15 % while a session was open (README, session 10): the
    prefetch thread's torch ops run on that thread alone; the tracking thread's count is unchanged."""
    import torch

    before = torch.get_num_threads()
    s = _open(assets, tmp_path / "w")
    counts, real = [], s._host_input

    def host_input(f):
        if threading.current_thread().name.startswith("samtrack-input"):
            counts.append(torch.get_num_threads())
        return real(f)

    s._host_input = host_input
    try:
        s.add_points(0, 1, [[64, 48]], [1])
        assert len(list(s.propagate("forward"))) == N
        assert torch.get_num_threads() == before
    finally:
        s.close()
    assert len(counts) == N - 1 and set(counts) == {1 if _openmp() else before}, counts
    fresh = []  # a thread started now (a server's or viewer's propagation thread) keeps torch's count
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [before]


def test_a_serial_background_thread_starts_no_openmp_workers():
    """What the helper prevents, as the OS sees it: a thread that runs a parallel torch op after
    ``serial_torch_in_this_thread`` adds itself to the process and no OpenMP worker threads."""
    import os
    import torch

    from samtrack.session.devices import serial_torch_in_this_thread

    if not _openmp() or torch.get_num_threads() < 2:
        pytest.skip("needs torch's OpenMP backend and 2+ threads (the helper does nothing otherwise)")
    tasks = lambda: {int(x) for x in os.listdir("/proc/self/task")}  # noqa: E731  (native thread ids)
    started, done, me = threading.Event(), threading.Event(), []

    def work():
        me.append(threading.get_native_id())
        serial_torch_in_this_thread()
        torch.ones(8_000_000).mul(2).sum()  # parallel when the thread's count allows it
        started.set()
        done.wait(60)

    before = tasks()
    t = threading.Thread(target=work)
    t.start()
    try:
        assert started.wait(60)
        new = tasks() - before - set(me)
        # an OpenMP worker would be new and alive; a thread an earlier test left may end meanwhile, not start
        assert not new, f"threads started beside the serial one: {new}"
    finally:
        done.set()
        t.join()


def _tasks() -> set[int]:
    import os

    return {int(x) for x in os.listdir("/proc/self/task")}  # native thread ids


def _team_of_this_thread() -> set[int]:
    """Run a parallel torch op on the calling thread: the native ids of the OpenMP workers it started
    (its team; empty when the thread held one already or the op ran serial)."""
    import torch

    before = _tasks()
    assert float(torch.ones(8_000_000).mul(2).sum()) == 16_000_000.0
    return _tasks() - before


def _exited(team: set[int]) -> bool:
    """Whether the native threads ``team`` have exited: a released team's workers leave the barrier and
    then exit, which /proc/self/task can show a moment later (3 in 1000 releases here); waits up to 10 s
    for that. A team that was not released stays while its thread lives, and this returns False."""
    import time

    deadline = time.monotonic() + 10
    while _tasks() & team:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _in_a_thread(fn):
    """``fn()`` in a new thread (a viewer's UI thread or a server's request thread stand-in); its result."""
    out: list = []

    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            out.append(("error", e))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    kind, value = out[0]
    if kind == "error":
        raise value
    return value


def _needs_teams():
    import torch

    if not _openmp() or torch.get_num_threads() < 2:
        pytest.skip("needs torch's OpenMP backend and 2+ threads (no team to release otherwise)")


def test_release_openmp_team_ends_the_calling_threads_workers_only():
    """``release_openmp_team`` ends the calling thread's idle OpenMP workers (they exit), leaves another
    thread's team alone, and the thread's next parallel op starts a team again."""
    from samtrack.session.devices import release_openmp_team

    _needs_teams()
    other_team, go, done = [], threading.Event(), threading.Event()

    def other():  # holds a team of its own meanwhile
        other_team.append(_team_of_this_thread())
        go.set()
        done.wait(60)

    t = threading.Thread(target=other)
    t.start()
    try:
        assert go.wait(60) and other_team[0], "the other thread's parallel op started no OpenMP worker"

        def mine():
            team = _team_of_this_thread()
            assert team, "a parallel op started no OpenMP worker"
            assert release_openmp_team()
            gone = _exited(team)
            again = _team_of_this_thread()  # a new team for the next parallel op (and a right result)
            release_openmp_team()
            return gone, again

        gone, again = _in_a_thread(mine)
        assert gone, "the released team's workers are still alive"
        assert again, "no team was started again after the release"
        assert other_team[0] <= _tasks(), "another thread's team was ended too"
    finally:
        done.set()
        t.join()


def test_a_prompt_or_propagation_leaves_its_thread_no_openmp_team(assets, tmp_path):
    """A thread that prompted (the viewer's UI thread, a server's request thread) or propagated holds no
    OpenMP team afterwards: its idle team made another thread's propagation 1.5x slower (README, session
    11). Checked as the OS sees it: the workers of the thread's team exit when the call returns, when a
    propagation finishes, and when one is closed early, and after reading a frame's result; an error in
    the call releases too."""
    _needs_teams()
    s = _open(assets, tmp_path / "w")
    try:
        def prompt():
            team = _team_of_this_thread()
            assert team, "a parallel op started no OpenMP worker"
            s.add_points(0, 1, [[64, 48]], [1])
            return _exited(team)  # seen from the thread: at its exit libgomp ends the team anyway

        assert _in_a_thread(prompt), "the prompting thread's OpenMP workers are still alive"

        def propagate(stop_early: bool):
            team = _team_of_this_thread()
            it = s.propagate("forward")
            next(it)
            next(it)
            alive_while_tracking = bool(_tasks() & team)  # the team works on while the propagation runs
            if stop_early:
                it.close()
            else:
                assert len(list(it)) > 0
            return alive_while_tracking, _exited(team)

        s.add_points(0, 1, [[60, 40]], [1])  # a correction: every frame after 0 is recomputed
        alive, gone = _in_a_thread(lambda: propagate(stop_early=True))
        assert alive and gone, "a propagation closed early left its thread's team"
        alive, gone = _in_a_thread(lambda: propagate(stop_early=False))
        assert alive and gone, "a finished propagation left its thread's team"

        def bad_prompt():
            team = _team_of_this_thread()
            with pytest.raises(PromptError):
                s.add_points(0, 1, [[5000, 48]], [1])  # outside the frame
            return _exited(team)

        assert _in_a_thread(bad_prompt), "a prompt that raised left its thread's team"

        def read_frame():  # a server request reading a frame (its masks upsampled to video resolution)
            team = _team_of_this_thread()
            assert s.frame_result(3).masks.shape == (1, 96, 128)
            return _exited(team)

        assert _in_a_thread(read_frame), "a thread that read a frame result kept its team"
    finally:
        s.close()


_SECOND_RUNTIME = r"""
import ctypes, os, sys, threading, time
import torch
ctypes.CDLL(sys.argv[1])  # a second libgomp beside torch's, as scikit-learn's or imagecodecs' wheel brings
from samtrack.session import devices
tasks = lambda: {int(x) for x in os.listdir("/proc/self/task")}
out = []
def run():
    before = tasks()
    torch.ones(8_000_000).mul(2).sum()
    team = tasks() - before
    devices.release_openmp_team()
    for _ in range(2000):  # its workers exit a moment after the release (up to 10 s)
        if not tasks() & team:
            break
        time.sleep(0.005)
    out.append((len(team), len(tasks() & team)))
    devices.serial_torch_in_this_thread()
    out.append(torch.get_num_threads())
t = threading.Thread(target=run)
t.start()
t.join()
print(out[0][0], out[0][1], out[1])
"""


def test_the_openmp_runtime_is_torchs_with_another_libgomp_loaded(tmp_path):
    """With another libgomp loaded beside torch's (scikit-learn's wheel bundles one; importing sklearn loads
    it), the release and the serial setting act on torch's runtime: the first libgomp by path was taken,
    and then a prompt's team stayed and a 'serial' thread ran parallel. The copy here lies under the
    test's tmp folder, which sorts before the venv where it is /tmp and the venv is elsewhere (as here)."""
    import shutil
    import subprocess
    import sys

    from samtrack.session import devices

    _needs_teams()
    lib = devices._openmp_runtime()
    if not devices._OMP_NAME[0].startswith("libgomp"):
        pytest.skip("torch's OpenMP runtime is not libgomp")
    copy = tmp_path / "libgomp-copy.so.1"
    shutil.copy(lib._name, copy)
    r = subprocess.run([sys.executable, "-c", _SECOND_RUNTIME, str(copy)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    team, alive, serial = map(int, r.stdout.split())
    assert team > 0, "a parallel op started no OpenMP worker"
    assert alive == 0, "the release paused the other libgomp: the thread's team is still alive"
    assert serial == 1, "serial_torch_in_this_thread set the other libgomp's thread count"
