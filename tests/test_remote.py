"""The remote client against a real ``samtrack serve`` subprocess on 127.0.0.1: a remote session gives what a
local one gives (masks, statuses, scores, exports, errors), and propagation survives a client disconnect and
a server killed with SIGKILL mid-stream (every frame exactly once, stores complete)."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import tifffile

import samtrack
from samtrack.errors import (AuthenticationError, FrameIndexError, NoPromptsError, PromptError,
                             ServerUnavailableError, UnknownObjectError, UploadTooLargeError)
from samtrack.io.result_store import Status
from samtrack.session.protocol import Session
from tests import media
from tests import model_utils as mu
from tests.server_utils import SERVER_ENV, ServerProcess, free_port, same_torch_threads

N = 12  # frames
W, H = 96, 64
SIZE = mu.IMAGE_SIZE  # 256


_same_threads = pytest.fixture(scope="module", autouse=True)(same_torch_threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_data")
    vid = media.write_video(root / "v.mp4", N, w=W, h=H)
    ck = mu.make_checkpoint(root / "ck.pt", image_size=SIZE)
    return root, vid, ck


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    root, _, _ = assets
    with ServerProcess(roots=[root], workdir=tmp_path_factory.mktemp("server"), args=["--max-upload-mb", "1"],
                       env=SERVER_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with samtrack.connect(server.url, token=server.token, reconnect_timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def local_ref(assets, tmp_path_factory):
    """The local session's run of :func:`script` (open), and its stores after the first propagation."""
    s = open_local(assets, tmp_path_factory.mktemp("local") / "w")
    out = script(s, after_first=lambda: {oid: stores(s, oid) for oid in (1, 2)})
    yield s, out
    s.close()


def stores(s, oid) -> dict:
    return {"status": s.status(oid), "scores": s.results.scores(oid),
            "masks": [s.results.mask(f, oid) for f in range(N)]}


def open_local(assets, workdir):
    _, vid, ck = assets
    return samtrack.open_session(vid, checkpoint=ck, image_size=SIZE, device="cpu", workdir=workdir)


def open_remote(client, assets, name: str):
    root, vid, ck = assets
    return client.open_session(str(vid), checkpoint=str(ck), image_size=SIZE, workdir=str(root / name))


def assert_same_results(expected: dict, remote, obj_ids):
    """``expected``: {object: :func:`stores` of the local session}."""
    for oid in obj_ids:
        e = expected[oid]
        np.testing.assert_array_equal(remote.status(oid), e["status"])
        for a, b in zip(remote.results.scores(oid), e["scores"]):
            np.testing.assert_array_equal(a, b)  # NaN where not computed, on both sides
        for f in range(N):
            lm, rm = e["masks"][f], remote.results.mask(f, oid)
            assert (lm is None) == (rm is None), (oid, f)
            if lm is not None:
                np.testing.assert_array_equal(rm, lm, err_msg=f"object {oid} frame {f}")


def assert_same_yields(local_out, remote_out):
    assert [r.frame_idx for r in remote_out] == [r.frame_idx for r in local_out]
    for a, b in zip(remote_out, local_out):
        assert a.obj_ids == b.obj_ids
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.object_scores, b.object_scores)
        np.testing.assert_array_equal(a.ious, b.ious)


def script(s, after_first=lambda: None):
    """Prompts, propagation, a correction on a propagated frame, re-propagation: what each step returned."""
    out = {"click": s.add_points(0, 1, [[30, 30]], [1]),
           "box": s.add_box(0, 2, [55, 15, 85, 50])}
    out["first"] = list(s.propagate("forward"))
    out["after_first"] = after_first()
    out["fix"] = s.add_points(7, 1, [[34, 28], [20, 50]], [1, 0])
    out["stale"] = s.status(1).copy()
    out["second"] = list(s.propagate("both"))
    return out


def test_remote_session_equals_local(assets, client, local_ref, tmp_path):
    local, lo = local_ref
    remote = open_remote(client, assets, "equal")
    try:
        assert isinstance(remote, Session)
        assert (remote.n_frames, remote.height, remote.width) == (N, H, W)
        assert remote.backend.spec.name == local.backend.spec.name
        re = script(remote, after_first=lambda: {oid: stores(remote, oid) for oid in (1, 2)})
        for k in ("click", "box", "fix"):
            assert re[k].obj_ids == lo[k].obj_ids
            np.testing.assert_array_equal(re[k].masks, lo[k].masks)
            np.testing.assert_array_equal(re[k].ious, lo[k].ious)
        assert re["fix"].masks.any()
        np.testing.assert_array_equal(re["stale"], lo["stale"])
        assert (lo["stale"] == Status.STALE).any()  # the correction made frames stale on both sides
        assert_same_yields(lo["first"], re["first"])
        assert_same_yields(lo["second"], re["second"])
        assert_same_results({oid: stores(local, oid) for oid in (1, 2)}, remote, [1, 2])
        assert remote.obj_ids == local.obj_ids == [1, 2]
        assert remote.keyframes(1) == local.keyframes(1) == [0, 7]
        assert remote.prompt_at(7, 1) == local.prompt_at(7, 1)
        for f in (0, 5):
            np.testing.assert_array_equal(remote.results.label_frame(f), local.results.label_frame(f))
            np.testing.assert_array_equal(remote.frames.read(f), local.frames.read(f))
        # exports: a file (tiff) and a folder (png), downloaded and unpacked in place
        rep_l = local.export("tiff", tmp_path / "l.tif")
        rep_r = remote.export("tiff", tmp_path / "r.tif")
        assert rep_r.path == tmp_path / "r.tif" and (rep_r.frames, rep_r.objects) == (rep_l.frames, rep_l.objects)
        np.testing.assert_array_equal(tifffile.imread(rep_r.path), tifffile.imread(rep_l.path))
        local.export("png", tmp_path / "lp")
        remote.export("png", tmp_path / "rp")
        names = sorted(p.name for p in (tmp_path / "lp").iterdir())
        assert names and names == sorted(p.name for p in (tmp_path / "rp").iterdir())
        for n in names:
            assert (tmp_path / "rp" / n).read_bytes() == (tmp_path / "lp" / n).read_bytes()
        with pytest.raises(samtrack.io.export.ExportError, match="exists"):
            remote.export("tiff", tmp_path / "r.tif")
        remote.export("tiff", tmp_path / "r.tif", force=True)
    finally:
        remote.close()
    assert remote.closed


def test_disconnect_mid_stream_then_resume(assets, client):
    s = open_remote(client, assets, "disconnect")
    try:
        s.add_points(0, 1, [[30, 30]], [1])
        first = []
        for r in s.propagate("forward"):  # leave after 4 frames: the server cancels after the frame in flight
            first.append(r.frame_idx)
            if len(first) == 4:
                break
        assert first == [0, 1, 2, 3]
        rest = [r.frame_idx for r in s.propagate("forward", start=4, replay=True)]
        assert sorted(first + rest) == list(range(N))  # every frame exactly once
        st = s.status(1)
        assert st[0] == Status.PROMPTED and (st[1:] == Status.PROPAGATED).all()

        # the same with a second object, resumed over the whole range with replay + skip
        s.add_points(0, 2, [[70, 30]], [1])
        got = []
        for r in s.propagate("forward", obj_ids=[2]):
            got.append(r.frame_idx)
            if len(got) == 3:
                break
        more = [r.frame_idx for r in s.propagate("forward", obj_ids=[2], replay=True, skip=got)]
        assert sorted(got + more) == list(range(N)) and len(set(more)) == len(more)
        assert (s.status(2)[1:] == Status.PROPAGATED).all()
        assert all(s.results.mask(f, 2) is not None for f in range(N))

        # cancel() from another thread as the stream starts: it ends early with "cancelled", nothing twice
        s.add_points(0, 3, [[50, 20]], [1])
        events = []

        def on_event(e):
            events.append(e["event"])
            if e["event"] == "started":
                threading.Thread(target=s.cancel).start()

        part = [r.frame_idx for r in s.propagate("forward", obj_ids=[3], on_event=on_event)]
        assert events[-1] == "cancelled" and len(part) < N and len(set(part)) == len(part)
        rest = [r.frame_idx for r in s.propagate("forward", obj_ids=[3], replay=True, skip=part)]
        assert sorted(part + rest) == list(range(N))
    finally:
        s.close()


def test_a_change_or_close_right_after_cancel_or_leaving_a_stream_waits_for_it_to_stop(assets, client):
    """cancel(), or leaving a propagation loop early, stops the server's propagation after its frame in flight;
    a prompt or close() sent at once must wait that out, not fail with SessionBusyError."""
    s = open_remote(client, assets, "stop-then-change")
    s.add_points(0, 1, [[30, 30]], [1])
    it = s.propagate("forward")
    first = next(it)
    s.cancel()
    s.add_points(first.frame_idx, 2, [[70, 30]], [1])  # at once: the frame in flight is still running there
    rest = [r.frame_idx for r in it]  # the stream then ends ("cancelled")
    assert len(rest) < N - 1 and 2 in s.obj_ids
    for _ in s.propagate("forward"):
        break  # leave the loop: the generator is closed, the server cancels
    s.close()  # at once
    assert s.closed and s.id not in [x["id"] for x in client.sessions()]


def test_leaving_a_with_block_while_a_propagation_is_being_read_closes_the_session(assets, client):
    """``with`` exits (close) while a propagate() generator is still open and unfinished (kept in a variable,
    so not closed by the loop): the stream is cancelled, the session closes, the generator then ends."""
    with open_remote(client, assets, "with-live-stream") as s:
        s.add_points(0, 1, [[30, 30]], [1])
        it = s.propagate("forward")
        first = next(it)
    assert s.closed and s.id not in [x["id"] for x in client.sessions()]
    rest = [r.frame_idx for r in it]  # the server stopped it: no error, no more than the frames left
    assert first.frame_idx == 0 and len(rest) < N


def test_busy_answers_are_waited_out_only_after_this_client_stopped_a_stream(monkeypatch):
    """The rule, without a server: a 409 SessionBusyError is retried (for up to BUSY_WAIT s) only after this
    client cancelled or left a stream; otherwise (someone else's propagation) it is raised at once, and a
    close() refused so leaves the session open."""
    from samtrack.errors import SessionBusyError
    from samtrack.remote import session as rs

    class Http:
        def __init__(self, busy: int):
            self.busy, self.calls = busy, []

        def request(self, method, path, **kw):
            self.calls.append((method, path))
            if not path.endswith("/cancel") and self.busy > 0:
                self.busy -= 1
                raise SessionBusyError("session x is propagating")
            return "answer"

    def remote(busy: int, streams: int = 0):
        """``streams``: propagation streams of this client open (a cancel() stops one of ours)."""
        s = object.__new__(rs.RemoteSession)
        s._http, s.id, s._closed, s._abandoned = Http(busy), "x", False, float("-inf")
        s._cancel, s._lock, s._live_streams = threading.Event(), threading.RLock(), streams
        s.frames = type("F", (), {"close": lambda self: None})()
        s._changed = lambda: None
        return s

    monkeypatch.setattr(rs.time, "sleep", lambda s: None)
    s = remote(busy=3)
    with pytest.raises(SessionBusyError):
        s._request("POST", "/prompts")  # nothing of ours was stopped: at once
    with pytest.raises(SessionBusyError):
        s.close()
    assert not s.closed
    s._live_streams = 1
    s.cancel()
    assert s._request("POST", "/prompts") == "answer" and s._http.busy == 0  # retried through 2 busy answers
    s = remote(busy=2, streams=1)
    s.cancel()
    s.close()
    assert s.closed and s._http.calls.count(("DELETE", "/v1/sessions/x")) == 3
    s = remote(busy=2, streams=1)
    s.close()  # a stream of ours still open: cancelled first, then its wind-down waited out
    assert s.closed and ("POST", "/v1/sessions/x/cancel") in s._http.calls
    s = remote(busy=2)
    s.cancel()  # no stream of ours: it stops nothing of ours, so a busy answer is another client's
    with pytest.raises(SessionBusyError):
        s._request("POST", "/prompts")
    assert s._http.calls.count(("POST", "/v1/sessions/x/prompts")) == 1
    s = remote(busy=10 ** 9, streams=1)  # the propagation never stops: given up after BUSY_WAIT s
    clock = iter(range(0, 10 ** 6, 5))
    monkeypatch.setattr(rs.time, "monotonic", lambda: float(next(clock)))
    s.cancel()
    with pytest.raises(SessionBusyError):
        s._request("POST", "/prompts")
    assert len(s._http.calls) < 20


def test_server_killed_mid_propagation_resumes(assets, local_ref, tmp_path, caplog):
    root, _, _ = assets
    expected = local_ref[1]["first"]  # the local run of the same prompts
    restarts = []
    with ServerProcess(roots=[root], workdir=tmp_path / "srv", env=SERVER_ENV) as srv:
        with samtrack.connect(srv.url, token=srv.token, reconnect_timeout=120) as c:
            s = open_remote(c, assets, "killed")
            s.add_points(0, 1, [[30, 30]], [1])
            s.add_box(0, 2, [55, 15, 85, 50])
            seen = []
            with caplog.at_level(logging.WARNING, logger="samtrack.remote.session"):
                for r in s.propagate("forward"):
                    seen.append(r)
                    if len(seen) == 1:  # crash the server mid-stream; it comes back on the same port by itself
                        srv.kill()
                        t = threading.Thread(target=lambda: restarts.append(srv.start()), daemon=True)
                        t.start()
            t.join(200)
            assert restarts and srv.starts == 2
            assert any("resuming" in m for m in caplog.messages)  # the stream really broke and was resumed
            assert sorted(r.frame_idx for r in seen) == list(range(N))  # every frame exactly once
            by_frame = {r.frame_idx: r for r in seen}
            for e in expected:
                got = by_frame[e.frame_idx]
                for k, oid in enumerate(e.obj_ids):
                    i = got.obj_ids.index(oid)
                    np.testing.assert_array_equal(got.masks[i], e.masks[k])
            assert_same_results(local_ref[1]["after_first"], s, [1, 2])
            s.close()


def test_typed_errors_cross_the_boundary(assets, client, server, tmp_path):
    local = open_local(assets, tmp_path / "local")
    remote = open_remote(client, assets, "errors")
    try:
        for s in (local, remote):
            s.add_points(0, 1, [[30, 30]], [1])

        def same(call):
            with pytest.raises(Exception) as le:
                call(local)
            with pytest.raises(type(le.value)) as re:
                call(remote)
            assert str(re.value) == str(le.value)
            return re.value

        assert isinstance(same(lambda s: s.frame_result(N + 5)), FrameIndexError)
        assert isinstance(same(lambda s: s.add_points(N, 1, [[3, 3]], [1])), FrameIndexError)
        assert isinstance(same(lambda s: s.status(42)), UnknownObjectError)
        assert isinstance(same(lambda s: s.add_points(0, 1, [[W + 50, 3]], [1])), PromptError)
        assert isinstance(same(lambda s: s.add_box(0, 1, [10, 10, 5, 20])), PromptError)
        for s in (local, remote):
            s.reset()
        assert isinstance(same(lambda s: list(s.propagate())), NoPromptsError)
        assert remote.frame_result(0).obj_ids == []  # the server went on serving
    finally:
        local.close()
        remote.close()
    # uploads: streamed, stored by content; over the limit (1 MiB here) 413, checked here and by the server
    up = client.upload(assets[1])
    assert up.endswith("v.mp4") and up != str(assets[1])
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    with pytest.raises(UploadTooLargeError, match="limit"):
        client.upload(big)
    limit = client.server_info.pop("max_upload_bytes")
    try:
        with pytest.raises(UploadTooLargeError, match="limit"):  # the server's 413
            client.upload(big)
    finally:
        client.server_info["max_upload_bytes"] = limit
    assert any(f["path"].endswith("v.mp4") for f in client.files(client.files()[0]["path"]))
    with pytest.raises(AuthenticationError):
        samtrack.connect(server.url, token="not-the-token-0123456789")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match=url):
        samtrack.connect(url, token="x")
