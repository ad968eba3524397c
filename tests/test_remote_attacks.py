"""``samtrack serve`` against a hostile client (found by attacking a real server): a FIFO or a device under a
root, a workdir that is a file, values of the wrong type inside prompts, garbage RLE masks, a giant point
list, an empty upload, and the connection a client keeps using after a server fault. One real server runs
in a subprocess on 127.0.0.1 (tests/server_utils.py); every request has a timeout, so a hang fails."""
from __future__ import annotations

import os

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from samtrack.remote.wire import encode_masks  # noqa: E402
from tests import media  # noqa: E402
from tests import model_utils as mu  # noqa: E402
from tests.server_utils import ServerProcess, ok  # noqa: E402
from tests.server_utils import err as error_message  # noqa: E402

SIZE = 128
H, W = 64, 96
TIMEOUT = 60  # seconds for one request: a request that blocks (a FIFO read, a giant prompt) fails the test


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("attacks")
    root = base / "root"
    root.mkdir()
    mu.make_checkpoint(root / "ck.pt", image_size=SIZE)
    media.write_video(root / "a.mp4", 6, w=W, h=H)
    os.mkfifo(root / "pipe.mp4")
    os.mkfifo(root / "pipe.pt")
    os.symlink("/dev/zero", root / "zero.mp4")  # outside the roots anyway: refused as such
    (root / "afile").write_bytes(b"not a folder")
    return {"base": base, "root": root}


@pytest.fixture(scope="module")
def srv(data):
    with ServerProcess([data["root"]], data["base"] / "srv", args=["--rate-limit", "0", "--max-upload-mb", "1"]) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv):
    # one connection: each request after a refused one runs on the same keep-alive connection
    with httpx.Client(base_url=srv.url, headers=srv.headers, timeout=TIMEOUT,
                      limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as c:
        yield c


@pytest.fixture(scope="module")
def sid(http):
    return ok(http.post("/v1/sessions", json={"video": "a.mp4", "checkpoint": "ck.pt", "image_size": SIZE}))["id"]


def err(r, status: int, kind: str) -> str:
    msg = error_message(r, status, kind)
    assert "Traceback" not in msg
    return msg


def click(http, sid: str, frame: int = 0):
    return ok(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "points", "frame": frame, "obj_id": 1,
                                                             "points": [[40, 30]], "labels": [1]}))


def test_a_pipe_under_a_root_is_refused_without_blocking_the_device(srv, http, sid):
    # before: the reader blocked on the FIFO forever while holding the device's lock, so every later
    # prompt and propagation of every session hung too
    for body in ({"video": "pipe.mp4"}, {"video": "a.mp4", "checkpoint": "pipe.pt"}):
        msg = err(http.post("/v1/sessions", json={"image_size": SIZE, "checkpoint": "ck.pt", **body}), 400,
                  "InvalidOptionError")
        assert "pipe" in msg and "regular file" in msg
    err(http.post("/v1/sessions", json={"video": "zero.mp4", "checkpoint": "ck.pt"}), 403, "ForbiddenPathError")
    assert click(http, sid)["obj_ids"] == [1]  # the device is free
    assert srv.running


def test_a_workdir_that_is_a_file_is_a_4xx_and_the_connection_stays_usable(data, http, sid):
    msg = err(http.post("/v1/sessions", json={"video": "a.mp4", "checkpoint": "ck.pt", "image_size": SIZE,
                                              "workdir": "afile"}), 400, "InvalidOptionError")
    assert "not a folder" in msg
    assert (data["root"] / "afile").read_bytes() == b"not a folder"
    assert click(http, sid)["frame"] == 0


def test_a_workdir_that_is_one_of_the_servers_own_folders_is_refused(srv, http, sid):
    # a root itself, the sessions folder, its id records or the uploads: a session's stores would be written
    # among the user's videos or the server's own files
    sessions = srv.workdir / "sessions"
    for wd in (".", str(srv.roots[0]), str(sessions), str(sessions / "ids"), str(sessions / "ids" / "x"),
               str(sessions / "uploads" / "y")):
        msg = err(http.post("/v1/sessions", json={"video": "a.mp4", "checkpoint": "ck.pt", "image_size": SIZE,
                                                  "workdir": wd}), 400, "InvalidOptionError")
        assert "own folders" in msg, wd
    assert not (sessions / "ids" / "x").exists()
    assert click(http, sid)["frame"] == 0


def test_a_server_fault_leaves_the_connection_usable(srv, http, sid):
    # an option the generator does not know fails deep inside the session (not a samtrack error); whatever
    # the status, the answer is the error body and the next request on the same connection works (before:
    # uvicorn dropped the connection after the 500 and the next request got 'connection reset')
    r = http.post(f"/v1/sessions/{sid}/find", json={"kind": "everything", "frame": 0,
                                                    "options": {"no_such_option": 1}})
    assert r.status_code >= 400 and set(r.json()["error"]) == {"type", "message"}, r.text
    for _ in range(2):
        assert ok(http.get("/v1/server"))["protocol"] == 1
    assert click(http, sid)["obj_ids"] == [1]
    assert "Exception in ASGI application" not in srv.log()


@pytest.mark.parametrize("change", [
    {"points": [["a", "b"]]}, {"points": "x"}, {"points": {"a": 1}}, {"points": [[None, None]]},
    {"labels": [2**70]}, {"labels": ["a"]}, {"labels": [[1]]}, {"frame": "0"}, {"frame": True}, {"frame": 1.0},
    {"obj_id": "1"}, {"clear": "yes"}, {"kind": "box", "box": [0, 0, "a", "b"]}, {"kind": "box", "box": "x"}])
def test_values_of_the_wrong_type_in_a_prompt_are_422(http, sid, change):
    body = {"kind": "points", "frame": 0, "obj_id": 1, "points": [[40, 30]], "labels": [1], **change}
    msg = err(http.post(f"/v1/sessions/{sid}/prompts", json=body), 422, "WireError")
    assert any(k in msg for k in change)  # names the field
    assert ok(http.get("/v1/server"))["protocol"] == 1


def test_numbers_still_reach_the_session_for_its_own_message(http, sid):
    # the stricter shape check must not take over the local API's messages about what values mean
    msg = err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "points", "frame": 0, "obj_id": 1,
                                                             "points": [[40, 30, 1]], "labels": [1]}),
              400, "PromptError")
    assert "(N, 2)" in msg
    assert "labels must be 1" in err(http.post(f"/v1/sessions/{sid}/prompts", json={
        "kind": "points", "frame": 0, "obj_id": 1, "points": [[40, 30]], "labels": [2]}), 400, "PromptError")
    assert "NaN" in err(http.post(f"/v1/sessions/{sid}/prompts", content=(
        b'{"kind": "points", "frame": 0, "obj_id": 1, "points": [[NaN, 3]], "labels": [1]}'),
        headers={"Content-Type": "application/json"}), 400, "PromptError")


def test_exemplar_boxes_of_the_wrong_type_are_422(http, sid):
    err(http.post(f"/v1/sessions/{sid}/find", json={"kind": "exemplars", "frame": 0, "boxes": "x"}), 422,
        "WireError")
    err(http.post(f"/v1/sessions/{sid}/find", json={"kind": "exemplars", "frame": 0, "boxes": [[0, 0, 9, 9]],
                                                    "box_labels": [2**70]}), 422, "WireError")


def test_garbage_rle_masks_are_refused(http, sid):
    m = np.zeros((H, W), bool)
    m[10:30, 20:50] = True
    good = encode_masks(m[None])[0]
    small = encode_masks(np.ones((1, 10, 10), bool))[0]
    for mask in ({"size": [H, W], "counts": "garbage!!"}, {"size": [H, W], "counts": ""},
                 {"size": [H, W], "counts": "\x00\x00"}, {"size": [H, W], "counts": good["counts"][:-3]},
                 {"size": [H, W], "counts": good["counts"] + "P"}, {"size": [H, W], "counts": small["counts"]},
                 {"size": [H, W, 3], "counts": good["counts"]}, {"size": [H + 0.5, W], "counts": good["counts"]},
                 {"size": "x", "counts": "0"}, {"size": [H, W], "counts": [0, H * W]}):
        err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "mask", "frame": 1, "obj_id": 2, "mask": mask}),
            400, "WireError")
    res = ok(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "mask", "frame": 1, "obj_id": 2, "mask": good}))
    assert 2 in res["obj_ids"]


def test_a_giant_point_list_is_refused_before_the_model_runs(http, sid):
    # before: 200,000 clicks held the device for more than ten minutes (and 2 GB) on the CPU
    n = 200_000
    msg = err(http.post(f"/v1/sessions/{sid}/prompts", json={"kind": "points", "frame": 0, "obj_id": 1,
                                                             "points": [[40, 30]] * n, "labels": [1] * n}),
              400, "PromptError")
    assert "at most" in msg
    assert click(http, sid)["obj_ids"]


def test_an_empty_upload_is_refused(srv, http):
    assert "empty" in err(http.put("/v1/uploads/empty.mp4", content=b""), 400, "InvalidOptionError")
    assert not list((srv.workdir / "sessions" / "uploads").rglob("empty.mp4"))


def test_the_token_is_never_in_the_log(srv, http):
    assert ok(http.get("/v1/server"))["protocol"] == 1
    assert srv.token not in srv.log()
