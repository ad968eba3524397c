"""``samtrack serve`` against bad clients: tokens, paths outside the roots, oversized uploads, malformed and
bad requests, a busy device, eviction, the request rate. A real server runs in a subprocess on 127.0.0.1
(tests/server_utils.py); the proof that a refused path is never opened runs in-process with spies."""
from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from samtrack.remote.wire import decode_array, decode_result  # noqa: E402
from tests import media  # noqa: E402
from tests import model_utils as mu  # noqa: E402
from tests.server_utils import ServerProcess, err, ok  # noqa: E402

SIZE = 128  # model input size: small, so the CPU tests stay quick
N, LONG = 10, 24  # frames of the short videos and of the one that keeps the device busy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A root with a checkpoint and videos, a folder outside it with a 'secret', and links leading out."""
    base = tmp_path_factory.mktemp("server")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    mu.make_checkpoint(root / "ck.pt", image_size=SIZE)
    for name, n in (("a.mp4", N), ("b.mp4", N), ("c.mp4", N), ("long.mp4", LONG)):
        media.write_video(root / name, n, w=96, h=64)
    media.write_video(outside / "secret.mp4", N, w=96, h=64)
    (outside / "ck.pt").write_bytes((root / "ck.pt").read_bytes())
    os.symlink(outside / "secret.mp4", root / "link.mp4")
    os.symlink(outside, root / "linkdir")
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def srv(data):
    with ServerProcess([data["root"]], data["base"] / "srv", args=["--max-upload-mb", "1", "--max-sessions", "3",
                                                                   "--rate-limit", "0"]) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=srv.url, headers=srv.headers, timeout=300) as c:
        yield c


def open_session(http, video: str) -> dict:
    return ok(http.post("/v1/sessions", json={"video": video, "checkpoint": "ck.pt", "image_size": SIZE}))


def prompt(http, sid: str, frame: int = 0, obj_id: int = 1, point=(40, 30)):
    return http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "points", "frame": frame, "obj_id": obj_id,
                                                          "points": [list(point)], "labels": [1]})


def stream(http, sid: str, **body):
    """Every line of one propagation stream, decoded."""
    with http.stream("POST", f"/v1/sessions/{sid}/propagate", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def frames_of(events) -> list[int]:
    return [e["result"]["frame"] for e in events if e["event"] == "frame"]


def still_serves(http) -> None:
    assert ok(http.get("/v1/server"))["protocol"] == 1


# -- tokens -------------------------------------------------------------------------------------------------
def test_every_endpoint_needs_the_token(srv, http):
    sid = open_session(http, "a.mp4")["id"]
    calls = [("GET", "/v1/server", None), ("GET", "/v1/files", None), ("POST", "/v1/sessions", {"video": "a.mp4"}),
             ("GET", f"/v1/sessions/{sid}", None), ("POST", f"/v1/sessions/{sid}/propagate", {}),
             ("PUT", "/v1/uploads/x.mp4", b"abc"), ("GET", f"/v1/sessions/{sid}/frames/0/image", None),
             ("POST", f"/v1/sessions/{sid}/prompts", "{not json"), ("GET", "/v1/no-such-route", None)]
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": srv.token},
                    {"Authorization": f"Basic {srv.token}"}):
        for method, path, body in calls:
            kw = {"json": body} if isinstance(body, dict) else {"content": body} if body is not None else {}
            r = httpx.request(method, srv.url + path, headers=headers, timeout=60, **kw)
            err(r, 401, "AuthenticationError")
    still_serves(http)


# -- paths ----------------------------------------------------------------------------------------------------
def _entries(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def test_paths_outside_the_roots_are_refused(data, srv, http):
    sessions = srv.workdir / "sessions"
    before = _entries(sessions)
    secret = str(data["outside"] / "secret.mp4")
    for body in ({"video": "../outside/secret.mp4"}, {"video": "sub/../a.mp4"}, {"video": secret},
                 {"video": "link.mp4"}, {"video": "linkdir/secret.mp4"},
                 {"video": "a.mp4", "checkpoint": str(data["outside"] / "ck.pt")},
                 {"video": "a.mp4", "checkpoint": "linkdir/ck.pt"},
                 {"video": "a.mp4", "checkpoint": "ck.pt", "workdir": str(data["outside"] / "wd")},
                 {"video": "a.mp4", "checkpoint": "ck.pt", "workdir": "../outside/wd"}):
        msg = err(http.post("/v1/sessions", json={"image_size": SIZE, **body}), 403, "ForbiddenPathError")
        assert "root" in msg
        still_serves(http)
    for under in ("..", str(data["outside"]), "linkdir"):
        err(http.get("/v1/files", params={"under": under}), 403, "ForbiddenPathError")
    assert not (data["outside"] / "wd").exists()
    assert _entries(sessions) == before  # no session folder, frame cache or id record was made
    listed = {f["path"] for f in ok(http.get("/v1/files", params={"under": "."}))["files"]}
    assert "./a.mp4" in listed and "./link.mp4" not in listed and "./linkdir" not in listed
    assert ok(http.post("/v1/sessions", json={"video": "a.mp4", "checkpoint": "ck.pt", "image_size": SIZE}))["id"]


def test_a_refused_path_is_never_opened(data, tmp_path, monkeypatch):
    """In-process, with every opener replaced by a spy: a refused request reaches none of them."""
    from fastapi.testclient import TestClient

    import samtrack.io
    import samtrack.session
    from samtrack.server import ServerConfig, create_app

    opened = []

    def spy(name):
        def f(*a, **k):
            opened.append((name, a))
            raise AssertionError(f"{name} called")
        return f

    import samtrack.session.checkpoints

    for mod, name in ((samtrack.session, "open_session"), (samtrack.session, "load_model"),
                      (samtrack.session.checkpoints, "resolve_model"), (samtrack.io, "open_video"),
                      (samtrack.io, "open_reader")):
        monkeypatch.setattr(mod, name, spy(name))
    token = "t" * 32
    app = create_app(ServerConfig(roots=(data["root"],), token=token, sessions_dir=tmp_path / "s", rate_limit=0))
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}, raise_server_exceptions=False) as c:
        for body in ({"video": "../outside/secret.mp4"}, {"video": str(data["outside"] / "secret.mp4")},
                     {"video": "link.mp4"}, {"video": "a.mp4", "checkpoint": "linkdir/ck.pt"}):
            err(c.post("/v1/sessions", json=body), 403, "ForbiddenPathError")
        assert opened == []
        # the spies do fire when a path is allowed (the check above is not vacuous)
        r = c.post("/v1/sessions", json={"video": "a.mp4", "checkpoint": "ck.pt"})
        assert r.status_code == 500 and opened and opened[0][0] in ("resolve_model", "load_model")


# -- uploads ------------------------------------------------------------------------------------------------
def test_oversized_upload_is_refused_and_leaves_nothing(data, srv, http):
    incoming = srv.workdir / "sessions" / "uploads" / "incoming"
    big = os.urandom(int(1.5 * 2**20))
    err(http.put("/v1/uploads/big.mp4", content=big), 413, "UploadTooLargeError")  # Content-Length says so

    def chunks():  # no Content-Length: refused once the received size passes the limit
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]

    try:
        r = http.put("/v1/uploads/big2.mp4", content=chunks())
        err(r, 413, "UploadTooLargeError")
    except httpx.TransportError:  # the server may close while the client still sends: refused all the same
        pass
    assert not incoming.exists() or not any(incoming.iterdir())
    assert not list((srv.workdir / "sessions" / "uploads").rglob("big*.mp4"))
    clip = (data["root"] / "b.mp4").read_bytes()
    first = ok(http.put("/v1/uploads/..%5Cevil name.mp4", content=clip))["video"]
    again = ok(http.put("/v1/uploads/evil name.mp4", content=clip))["video"]
    assert Path(first).parent == Path(again).parent  # stored by content: the same folder
    assert Path(again).name == "evil_name.mp4" and Path(again).read_bytes() == clip
    assert (srv.workdir / "sessions").resolve() in Path(first).resolve().parents
    st = open_session(http, first)  # an upload opens like any video under the roots
    assert st["info"]["n_frames"] == N


# -- bad requests -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_messages(data, tmp_path_factory):
    """What the local API says for the same mistakes, on the same video and checkpoint."""
    import samtrack
    from samtrack.errors import SamtrackError

    msgs = {}
    with samtrack.open_session(data["root"] / "a.mp4", checkpoint=data["root"] / "ck.pt", image_size=SIZE,
                               workdir=tmp_path_factory.mktemp("local")) as s:
        for key, call in (("frame", lambda: s.add_points(99, 1, [[40, 30]], [1])),
                          ("point", lambda: s.add_points(0, 1, [[400, 30]], [1])),
                          ("labels", lambda: s.add_points(0, 1, [[40, 30]], [1, 1])),
                          ("box", lambda: s.add_box(0, 1, [200, 200, 300, 300])),
                          ("object", lambda: s.status(77)),
                          ("no_prompts", lambda: list(s.propagate()))):
            try:
                call()
            except SamtrackError as e:
                msgs[key] = (type(e).__name__, str(e))
    return msgs


def test_bad_requests_get_the_local_message_and_the_server_goes_on(http, local_messages):
    sid = open_session(http, "c.mp4")["id"]
    bodies = {"frame": {"frame": 99, "points": [[40, 30]], "labels": [1]},
              "point": {"frame": 0, "points": [[400, 30]], "labels": [1]},
              "labels": {"frame": 0, "points": [[40, 30]], "labels": [1, 1]}}
    for key, body in bodies.items():
        kind, msg = local_messages[key]
        assert err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "points", "obj_id": 1, **body}),
                   400, kind) == msg
        still_serves(http)
    kind, msg = local_messages["box"]
    assert err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "box", "frame": 0, "obj_id": 1,
                                                               "box": [200, 200, 300, 300]}), 400, kind) == msg
    kind, msg = local_messages["object"]
    assert err(http.get(f"/v1/sessions/{sid}/objects/77/status"), 404, kind) == msg
    kind, msg = local_messages["no_prompts"]
    assert err(http.post(f"/v1/sessions/{sid}/propagate", json={}), 409, kind) == msg
    # malformed JSON, a body of the wrong shape, a bad mask, an unknown session
    bad = http.post(f"/v1/sessions/{sid}/prompts", content=b'{"kind": "points", "frame": ',
                    headers={"Content-Type": "application/json"})
    assert "JSON" in err(bad, 400, "WireError")
    err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "points", "frame": "x"}), 422, "WireError")
    err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "lasso", "frame": 0, "obj_id": 1}), 422, "WireError")
    err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "mask", "frame": 0, "obj_id": 1,
                                                       "mask": {"size": [3, 3], "counts": "0"}}), 400, "WireError")
    err(http.post(f"/v1/sessions/{sid}/propagate", json={"direction": "sideways"}), 400, "InvalidOptionError")
    err(http.get("/v1/sessions/0123456789abcdef"), 404, "SessionClosedError")
    err(http.get("/v1/sessions/..%5C..%5Cetc"), 404, "SessionClosedError")
    err(http.get(f"/v1/sessions/{sid}/frames/0/image", params={"format": "gif"}), 400, "InvalidOptionError")
    # and a normal request still works, with the same session
    res = decode_result(ok(prompt(http, sid)), 64, 96)
    assert res.obj_ids == [1] and res.masks.shape == (1, 64, 96)


def test_a_folder_another_process_has_open_is_refused_with_409_naming_it(data, http):
    """A job folder a ``samtrack track`` on the server machine still writes: the server does not open a
    second writer on it; once the folder is free it opens."""
    from samtrack.io.folder_lock import FolderLock

    body = {"video": "a.mp4", "checkpoint": "ck.pt", "image_size": SIZE, "workdir": str(data["root"] / "held-job")}
    with FolderLock(data["root"] / "held-job").acquire(purpose="a test holding the folder"):
        msg = err(http.post("/v1/sessions", json=body), 409, "SessionInUseError")
        assert f"process {os.getpid()}" in msg and "another work folder" in msg
        still_serves(http)
    sid = ok(http.post("/v1/sessions", json=body))["id"]
    ok(http.delete(f"/v1/sessions/{sid}"))


def _manager_of_one(tmp_path, monkeypatch):
    """(an in-process SessionManager with --max-sessions 1 and a cost-free model, its root holding a.mp4 and
    b.mp4)."""
    from samtrack.server.manager import SessionManager
    from samtrack.server.security import Roots
    from samtrack.session.backends.fake import FakeBackend

    root = tmp_path / "root"
    root.mkdir()
    for name in ("a.mp4", "b.mp4"):
        media.write_video(root / name, 6, w=64, h=48)
    m = SessionManager(Roots([root]), tmp_path / "sessions", max_sessions=1)
    backend = FakeBackend(64)
    monkeypatch.setattr(m, "model", lambda args: backend)
    return m, root


def test_a_request_for_a_session_being_evicted_waits_for_its_close_then_reopens_it(tmp_path, monkeypatch):
    """An eviction (--max-sessions, --idle-timeout) closes the session outside the id's opening lock: a request
    for that id meanwhile reopens it from its folder, which the closing session still holds. The reopen waits
    for the close instead of answering 409 'in use by another session of this process' (a session the client
    cannot close). In-process, with a fake model; the close is held open by events, no timing."""
    import samtrack.session as session_mod

    m, root = _manager_of_one(tmp_path, monkeypatch)
    a = m.open({"video": "a.mp4", "workdir": str(root / "wa")})
    a.session.add_box(0, 1, [5, 5, 30, 30])
    m.release(a)

    closing, proceed, arrived = threading.Event(), threading.Event(), threading.Event()
    real_close, real_open = a.session.close, session_mod.open_session

    def held_close():  # the eviction's close, held until the reopen request has arrived
        closing.set()
        proceed.wait()
        real_close()

    class Arrival(threading.Event):  # the reopen waiting for the close
        def wait(self, timeout=None):
            arrived.set()
            return super().wait(timeout)

    def opening(*args, **kw):  # the reopen opening the folder (before the close is done, without the wait)
        arrived.set()
        return real_open(*args, **kw)

    a.session.close = held_close
    a.closed = Arrival()
    monkeypatch.setattr(session_mod, "open_session", opening)
    evictor = threading.Thread(target=lambda: m.release(m.open({"video": "b.mp4", "workdir": str(root / "wb")})))
    evictor.start()
    assert closing.wait(60)
    got: dict = {}

    def request():
        try:
            got["served"] = m.acquire(a.sid)
        except Exception as e:  # noqa: BLE001  (what the client would have been answered)
            got["error"] = e

    client = threading.Thread(target=request)
    client.start()
    assert arrived.wait(60)
    proceed.set()
    client.join(60)
    evictor.join(60)
    assert "error" not in got, got.get("error")
    served = got["served"]
    assert served is not a and served.session.obj_ids == [1]  # reopened from the folder, with its object
    m.release(served)
    m.close_all()


def test_an_open_refused_for_a_folder_in_use_evicts_no_other_session(tmp_path, monkeypatch):
    """--max-sessions 1 with one idle session: an open of a folder another process writes is refused (409)
    before room is made, so the idle session stays open."""
    from samtrack.errors import SessionInUseError
    from samtrack.io.folder_lock import FolderLock

    m, root = _manager_of_one(tmp_path, monkeypatch)
    a = m.open({"video": "a.mp4", "workdir": str(root / "wa")})
    m.release(a)
    with FolderLock(root / "wb").acquire(purpose="samtrack track (a test)"):
        with pytest.raises(SessionInUseError):
            m.open({"video": "b.mp4", "workdir": str(root / "wb")})
    assert [s.sid for s in m.list()] == [a.sid] and not a.session.closed
    b = m.open({"video": "b.mp4", "workdir": str(root / "wb")})  # free now: a is evicted for it
    assert [s.sid for s in m.list()] == [b.sid] and a.session.closed
    m.release(b)
    m.close_all()

# -- the device queue, the busy session, disconnect and resume ------------------------------------------------
def test_second_propagation_queues_and_both_finish(http):
    a, b = open_session(http, "long.mp4")["id"], open_session(http, "b.mp4")["id"]
    ok(prompt(http, a))
    ok(prompt(http, b))
    first_frame, events_a = threading.Event(), []

    def run_a():
        with http.stream("POST", f"/v1/sessions/{a}/propagate", json={"direction": "forward"}) as r:
            for line in r.iter_lines():
                events_a.append(json.loads(line))
                if events_a[-1]["event"] == "frame":
                    first_frame.set()
        first_frame.set()

    t = threading.Thread(target=run_a)
    t.start()
    try:
        assert first_frame.wait(300)
        # while a propagates (LONG frames, each a model step on the CPU): b's stream waits for the device
        # and says so; b takes prompts meanwhile; a refuses them
        err(prompt(http, a, frame=5), 409, "SessionBusyError")
        ok(prompt(http, b, frame=3, obj_id=2))  # model work of another session runs between a's frames
        assert ok(http.get(f"/v1/sessions/{a}"))["propagating"] is True  # (a was not waited for)
        events_b = stream(http, b, direction="forward")
    finally:
        t.join(300)
    assert events_b[0] == {"event": "queued", "position": 1}, events_b[:3]
    assert events_b[-1] == {"event": "done", "frames": N}
    assert sorted(frames_of(events_b)) == list(range(N))
    ids = {e["result"]["frame"]: e["result"]["obj_ids"] for e in events_b if e["event"] == "frame"}
    assert all(ids[f] == [1, 2] for f in range(3, N))  # the prompt given meanwhile is propagated too
    assert events_a[-1] == {"event": "done", "frames": LONG}
    assert sorted(frames_of(events_a)) == list(range(LONG))
    assert ok(http.get(f"/v1/sessions/{a}"))["propagating"] is False
    ok(prompt(http, a, frame=5))  # idle again: prompts are taken


def test_disconnect_cancels_and_replay_with_skip_gives_each_frame_once(http):
    sid = open_session(http, "long.mp4")["id"]
    ok(http.post(f"/v1/sessions/{sid}/reset"))
    ok(prompt(http, sid))
    got = []
    with http.stream("POST", f"/v1/sessions/{sid}/propagate", json={"direction": "forward"}) as r:
        for line in r.iter_lines():
            ev = json.loads(line)
            if ev["event"] == "frame":
                got.append(ev["result"]["frame"])
                if len(got) == 3:
                    break  # the client goes away mid-stream
    for _ in range(600):  # the server sees the client gone and stops after the frame in flight
        if not ok(http.get(f"/v1/sessions/{sid}"))["propagating"]:
            break
        threading.Event().wait(0.1)
    status = decode_array(ok(http.get(f"/v1/sessions/{sid}/objects/1/status"))["status"])
    assert (status == 0).any(), status  # stopped early: frames left to compute
    # the same request again, with replay and what was received: every frame of the range exactly once
    events = stream(http, sid, direction="forward", replay=True, skip=[[f, f] for f in got])
    assert events[-1]["event"] == "done"
    again = frames_of(events)
    assert not set(again) & set(got)
    assert sorted(got + again) == list(range(LONG))  # every frame once
    status = decode_array(ok(http.get(f"/v1/sessions/{sid}/objects/1/status"))["status"])
    assert set(status.tolist()) <= {1, 2}  # every frame propagated or prompted
    # cancel by request: nothing running -> False
    assert ok(http.post(f"/v1/sessions/{sid}/cancel")) == {"cancelled": False}


# -- eviction ----------------------------------------------------------------------------------------------------
def test_an_evicted_session_reopens_with_its_objects_and_results(http):
    first = open_session(http, "a.mp4")
    sid = first["id"]
    ok(http.post(f"/v1/sessions/{sid}/reset"))
    ok(http.post(f"/v1/sessions/{sid}/objects", json={"obj_id": 3, "name": "cell", "color": [255, 0, 0]}))
    ok(prompt(http, sid, obj_id=3))
    assert frames_of(stream(http, sid, direction="forward")) == list(range(N))
    status = ok(http.get(f"/v1/sessions/{sid}/objects/3/status"))
    result = ok(http.get(f"/v1/sessions/{sid}/frames/6/result"))
    replayed = stream(http, sid, direction="forward", start=4, stop=6, replay=True, logits=True)
    assert frames_of(replayed) == [4, 5, 6]  # already computed: read back from the stores
    r6 = decode_result(replayed[-2]["result"], 64, 96)
    assert r6.logits.shape == (1, 64, 96) and not np.all(np.abs(r6.logits) == 1)  # real logits, on request
    assert np.array_equal(r6.masks, decode_result(result, 64, 96).masks)
    for v in ("b.mp4", "c.mp4", "long.mp4"):  # --max-sessions 3: the least recently used (sid) goes
        open_session(http, v)
    assert sid not in {s["id"] for s in ok(http.get("/v1/sessions"))["sessions"]}
    back = ok(http.get(f"/v1/sessions/{sid}"))  # reopened from its folder, same id
    assert back["obj_ids"] == [3] and back["objects"]["3"]["name"] == "cell"
    assert back["objects"]["3"]["keyframes"] == [0]
    assert ok(http.get(f"/v1/sessions/{sid}/objects/3/status")) == status
    assert ok(http.get(f"/v1/sessions/{sid}/frames/6/result")) == result
    assert open_session(http, "a.mp4")["id"] == sid  # the same video, model and size: the same id


def test_frame_image_and_export(http):
    import cv2
    import io
    import zipfile

    sid = open_session(http, "a.mp4")["id"]
    r = http.get(f"/v1/sessions/{sid}/frames/2/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert img.shape == (64, 96, 3)
    assert media.read_index(img) == 2  # the frame asked for, upright RGB
    r = http.get(f"/v1/sessions/{sid}/frames/2/image", params={"format": "jpeg", "quality": 80})
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    err(http.get(f"/v1/sessions/{sid}/frames/{N}/image"), 400, "FrameIndexError")
    r = http.post(f"/v1/sessions/{sid}/export", json={"format": "tiff", "allow_incomplete": True})
    assert r.status_code == 200, r.text
    rep = json.loads(r.headers["x-samtrack-export"])
    assert rep["format"] == "tiff" and rep["frames"] == N
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert names == [rep["name"]]
    err(http.post(f"/v1/sessions/{sid}/export", json={"format": "nope"}), 409, "ExportError")


# -- a second, strict server: rate limit, idle timeout, restart --------------------------------------------------
def test_rate_limit_idle_timeout_and_restart(data, tmp_path):
    with ServerProcess([data["root"]], tmp_path / "srv2", args=["--rate-limit", "4", "--idle-timeout", "1"]) as s:
        with httpx.Client(base_url=s.url, headers=s.headers, timeout=300) as c:
            answers = [c.get("/v1/server") for _ in range(30)]
            assert answers[0].status_code == 200
            limited = [r for r in answers if r.status_code == 429]
            assert limited, [r.status_code for r in answers]
            assert "--rate-limit" in err(limited[0], 429, "RateLimitedError")
            _wait_ok(c, "/v1/server")
            sid = _wait_ok(c, "/v1/sessions", "post", json={"video": "b.mp4", "checkpoint": "ck.pt",
                                                             "image_size": SIZE})["id"]
            _wait_ok(c, f"/v1/sessions/{sid}/prompts", "post", json={"kind": "points", "frame": 2, "obj_id": 4,
                                                                     "points": [[40, 30]], "labels": [1]})
            for _ in range(600):  # closed by the idle timeout (checked every 0.25 s)
                if sid not in {x["id"] for x in _wait_ok(c, "/v1/sessions")["sessions"]}:
                    break
                threading.Event().wait(0.2)
            else:
                pytest.fail("the idle session was not closed")
            assert _wait_ok(c, f"/v1/sessions/{sid}")["objects"]["4"]["keyframes"] == [2]
            s.kill()  # a crash: the id record and the folder stay
            s.start()
            assert _wait_ok(c, f"/v1/sessions/{sid}")["objects"]["4"]["keyframes"] == [2]


def _wait_ok(c, path, method="get", **kw) -> dict:
    """A request retried while it is rate limited."""
    for _ in range(100):
        r = c.request(method.upper(), path, **kw)
        if r.status_code != 429:
            return ok(r)
        threading.Event().wait(0.3)
    pytest.fail(f"{path}: still rate limited")


# -- the command line ---------------------------------------------------------------------------------------------
def test_serve_user_mistakes_are_one_line(tmp_path, capsys):
    from samtrack.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--root", str(tmp_path / "missing"), "--token-file", str(tmp_path / "tok")])
    assert e.value.code == 2
    out = capsys.readouterr().err
    assert "missing" in out and "is not a folder" in out and "Traceback" not in out
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["serve", "--root", str(tmp_path), "--port", str(port), "--token-file", str(tmp_path / "tok")])
    assert e.value.code == 2
    out = capsys.readouterr()
    assert "--port" in out.err and "Traceback" not in out.err
    tok = tmp_path / "tok"
    assert tok.stat().st_mode & 0o777 == 0o600  # created, private, and never printed
    assert tok.read_text().strip() not in out.err + out.out
    with pytest.raises(SystemExit) as e:
        main(["serve", "--root", str(tmp_path), "--port", "70000"])
    assert e.value.code == 2


def test_a_quiet_stream_sends_heartbeats_and_the_client_skips_them(monkeypatch):
    """A slow frame (or a long device queue) must not look like a dead connection: after HEARTBEAT_S without a
    line the server says it is alive; the lines end at the last event."""
    import asyncio
    from types import SimpleNamespace

    from samtrack.server import streaming

    monkeypatch.setattr(streaming, "HEARTBEAT_S", 0.5)
    cancelled = []
    job = object.__new__(streaming.PropagationJob)
    # the job gave the session back before its last line (propagation None): the stream's end stops the job
    # but must not cancel the session's propagation, which may be a newer job's by then
    job.served = SimpleNamespace(sid="s", session=SimpleNamespace(cancel=lambda: cancelled.append(1)),
                                 propagation=None, owner_lock=__import__("threading").Lock())
    job.stop = __import__("threading").Event()

    class Request:
        async def is_disconnected(self):
            return False

    async def run():
        job.queue = asyncio.Queue()
        asyncio.get_running_loop().call_later(1.6, job.queue.put_nowait, {"event": "done", "frames": 0})
        return [line async for line in job.lines(Request(), {"event": "started", "total": 0})]

    lines = asyncio.run(run())
    events = [json.loads(x)["event"] for x in lines]
    assert events[0] == "started" and events[-1] == "done"
    assert events.count("alive") >= 2 and set(events[1:-1]) == {"alive"}
    assert job.stop.is_set() and not cancelled  # any end of the stream stops the job (nothing left running)


def test_the_last_line_is_sent_after_the_session_is_given_back(data, tmp_path):
    """A client that reads ``done`` (or ``cancelled``, or ``error``) and at once prompts, exports or closes must
    not get 409 "is propagating": when the job puts its last line on the stream, the session is no longer
    marked propagating, the device is free and the manager's use count is given back. Checked at the moment
    each line is emitted (the race the README's remote example once lost in CI is timing, this is not)."""
    import asyncio

    import samtrack
    from samtrack.server.locks import Device
    from samtrack.server.manager import Served
    from samtrack.server.routes import PropagateBody
    from samtrack.server.streaming import PropagationJob

    s = samtrack.open_session(str(data["root"] / "a.mp4"), checkpoint=str(data["root"] / "ck.pt"), image_size=SIZE,
                              workdir=tmp_path / "w")
    try:
        s.add_points(0, 1, [[40, 30]], [1])

        def run(body: dict, *, device_held_by=None, break_after: int | None = None):
            sv = Served("sid", None, s, Device("cpu"))
            if device_held_by is not None:  # another propagation runs on the device; this one is cancelled waiting
                assert sv.device.enter(device_held_by, lambda k: None, threading.Event())
            sv.users = 1
            job = PropagationJob(sv, PropagateBody(**body), None)
            sv.propagation = job
            job.served_release = lambda: setattr(sv, "users", sv.users - 1)
            seen = []
            emit = job._emit

            def spy(item):
                seen.append((item if isinstance(item, BaseException) else item.get("event"),
                             sv.propagating, sv.device.busy, sv.users))
                emit(item)

            job._emit = spy
            if break_after is not None:  # the session's propagation fails after some frames
                real = s.propagate

                def failing(*a, **k):
                    g = real(*a, **k)
                    for i, r in enumerate(g):
                        if i == break_after:
                            g.close()
                            raise RuntimeError("disk gone")
                        yield r
                s.propagate = failing

            async def go():
                job.loop = asyncio.get_running_loop()
                if device_held_by is not None:
                    job.stop.set()
                job.start()
                await asyncio.to_thread(job.join, 600)

            try:
                asyncio.run(go())
            finally:
                s.__dict__.pop("propagate", None)
            assert not job._thread.is_alive()
            return seen

        seen = run({"direction": "forward"}, break_after=2)  # first: all frames still to compute
        assert [e for e, *_ in seen] == ["started", "frame", "frame", "error"]
        assert all(tuple(st) == (True, True, 1) for _, *st in seen[:-1])
        assert seen[-1][1:] == (False, False, 0), f"'error' was sent while the session was still held: {seen[-1]}"

        seen = run({"direction": "forward"})
        events = [e for e, *_ in seen]
        assert events[0] == "started" and events[-1] == "done" and set(events[1:-1]) == {"frame"}
        assert all(tuple(st) == (True, True, 1) for _, *st in seen[:-1])  # every frame line: still propagating
        assert seen[-1][1:] == (False, False, 0), f"'done' was sent while the session was still held: {seen[-1]}"

        seen = run({"direction": "forward"}, device_held_by=object())  # cancelled before it got the device
        assert seen == [("cancelled", False, True, 0)]  # the device: still held by the other propagation
    finally:
        s.close()


def test_the_end_of_an_old_stream_does_not_cancel_the_next_propagation(data, tmp_path):
    """The last line is sent after the job gave the session back, so a client can start the next propagation
    before the old stream's response has finished (its end calls job.cancel()). That late cancel must not stop
    the new propagation of the same session: only a job that still holds the session cancels it. Checked
    without timing: the old job's cancel() is called while the new propagation is between two frames."""
    import samtrack
    from samtrack.server.locks import Device
    from samtrack.server.manager import Served
    from samtrack.server.routes import PropagateBody
    from samtrack.server.streaming import PropagationJob

    s = samtrack.open_session(str(data["root"] / "a.mp4"), checkpoint=str(data["root"] / "ck.pt"), image_size=SIZE,
                              workdir=tmp_path / "w")
    try:
        s.add_points(0, 1, [[40, 30]], [1])
        sv = Served("sid", None, s, Device("cpu"))
        old = PropagationJob(sv, PropagateBody(direction="forward"), None)
        new = object()  # the next request's job: it claimed the session after the old one gave it back
        sv.propagation = new
        it = s.propagate("forward", 0, 5)
        first = next(it)
        old.cancel()  # the old stream's response ends now (after its "done" line)
        rest = [r.frame_idx for r in it]
        assert old.stop.is_set()
        assert [first.frame_idx] + rest == list(range(6)), f"the new propagation was cancelled: {rest}"
        sv.propagation = old  # while a job holds the session, its cancel() does stop the propagation
        assert s.n_frames - 6 >= 3
        it = s.propagate("forward", 5, s.n_frames - 1)
        next(it)
        old.cancel()
        assert len(list(it)) < s.n_frames - 7
    finally:
        s.close()


def test_a_jobs_cancel_and_a_newer_claim_do_not_interleave():
    """``cancel()``'s "does this job still hold the session? then cancel it" runs under the session's
    ``owner_lock``, which a claim (and a job's release) takes too: a cancel that began while a newer job was
    claiming waits for it and then leaves the newer propagation alone."""
    from types import SimpleNamespace

    from samtrack.server.streaming import PropagationJob

    cancelled = []
    job = object.__new__(PropagationJob)
    sv = SimpleNamespace(sid="s", session=SimpleNamespace(cancel=lambda: cancelled.append(1)), propagation=job,
                         owner_lock=threading.Lock())
    job.served, job.stop = sv, threading.Event()
    started = threading.Event()
    with sv.owner_lock:  # a release and a newer claim, as one step under the lock
        t = threading.Thread(target=lambda: (started.set(), job.cancel()))
        t.start()
        started.wait(60)
        t.join(0.5)  # the cancel is waiting for the lock (without it, it would have cancelled the session here)
        sv.propagation = object()  # the newer job
    t.join(60)
    assert not t.is_alive() and job.stop.is_set()
    assert cancelled == [], "the old job's cancel reached the newer propagation"
    sv.propagation = job  # while it does hold the session, cancel() still cancels it
    job.cancel()
    assert cancelled == [1]
