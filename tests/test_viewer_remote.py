"""The napari widget driving a session on a real ``samtrack serve`` subprocess (127.0.0.1): click, propagate
with live masks, correct by painting, re-propagate, export (downloaded), as with a local session."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari", reason="the viewer extra is not installed (make setup installs it)")

from samtrack.io.result_store import Status  # noqa: E402
from samtrack.viewer import view  # noqa: E402
from tests import media  # noqa: E402
from tests import model_utils as mu  # noqa: E402
from tests.server_utils import ServerProcess  # noqa: E402
from tests.test_viewer import _click, _wait  # noqa: E402

pytestmark = pytest.mark.gui
N, W, H, S = 12, 96, 64, mu.IMAGE_SIZE


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer_remote_data")
    media.write_video(root / "v.mp4", N, w=W, h=H)
    mu.make_checkpoint(root / "ck.pt", image_size=S)
    with ServerProcess(roots=[root], workdir=tmp_path_factory.mktemp("viewer_remote_server")) as srv:
        yield root, srv


def test_widget_drives_a_remote_session(make_napari_viewer, served, tmp_path, qtbot):
    root, srv = served
    viewer = make_napari_viewer()
    _, w = view("v.mp4", server=srv.url, token=srv.token, checkpoint="ck.pt", image_size=S, viewer=viewer,
                workdir=str(root / "gui_session"))
    s = w.session
    assert w.remote and type(s).__name__ == "RemoteSession"
    assert w.frames.info.n_frames == N and w.image_layer.data.shape == (N, H, W, 3)
    assert w.server_edit.text() == srv.url
    # the frame shown is the server's display pixels, fetched lazily
    np.testing.assert_array_equal(np.asarray(w.image_layer.data[3]), s.frames.read(3))

    w.goto(4)
    w.btn_add.click()
    _click(viewer, 30, 30)
    w.btn_add.click()
    _click(viewer, 70, 35)
    assert s.obj_ids == [1, 2]
    assert s.prompt_at(4, 1).points == ((30.0, 30.0),)
    assert (s.status(1)[4], s.status(2)[4]) == (Status.PROMPTED, Status.PROMPTED)
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(4))

    w.btn_both.click()
    assert w.busy
    _wait(qtbot, w)
    for oid in (1, 2):
        st = s.status(oid)
        assert (st[:4] == Status.PROPAGATED).all() and (st[5:] == Status.PROPAGATED).all(), st
    w.goto(8)
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(8))  # the server's masks shown
    before2 = [s.frame_result(f, [2]).masks[0] for f in range(N)]

    # correction: paint object 1 on frame 9, then re-propagate; the painted mask sticks on the server
    w.goto(9)
    w.labels_layer.selected_label = 1
    w.labels_layer.brush_size = 12
    w.labels_layer.paint((20, 20), 1)
    painted = np.asarray(w.labels_layer.data) == 1
    qtbot.waitUntil(lambda: s.keyframes(1) == [4, 9], timeout=60_000)
    assert s.status(1)[9] == Status.PROMPTED and (s.status(1) == Status.STALE).any()
    w.btn_both.click()
    _wait(qtbot, w)
    assert (s.status(1) != Status.STALE).all()
    np.testing.assert_array_equal(s.frame_result(9, [1]).masks[0], painted)
    for f in range(N):  # object 2 had no correction: kept as it was
        np.testing.assert_array_equal(s.frame_result(f, [2]).masks[0], before2[f])

    # export through the widget: written on the server, downloaded here
    out = w.export("tiff", tmp_path / "masks.tif")
    import tifffile

    labels = tifffile.imread(out)
    assert labels.shape == (N, H, W)
    np.testing.assert_array_equal(labels[9] == 1, painted & (labels[9] != 2))
    w.close_session()
    assert s.closed and not w.remote


def test_server_field_connects_and_opens_on_the_server(make_napari_viewer, served, tmp_path, qtbot):
    root, srv = served
    viewer = make_napari_viewer()
    _, w = view(viewer=viewer)
    assert not w.connect_server(srv.url, token="not-the-token")
    assert "401" in w.status.text() or "token" in w.status.text().lower()
    (tmp_path / "token").write_text(srv.token + "\n")
    assert w.connect_server(srv.url, token_file=tmp_path / "token")
    w.open_remote("../outside.mp4", checkpoint="ck.pt", image_size=S)
    assert w.frames is None and "root" in w.status.text().lower()  # refused, said in words
    w.open_remote("v.mp4", checkpoint="ck.pt", image_size=S, workdir=str(root / "gui_session2"))
    assert w.frames is not None and w.session.n_frames == N
    w.goto(2)
    w.btn_add.click()
    _click(viewer, 30, 30)
    assert w.session.keyframes(1) == [2]
    assert not w.connect_server("http://127.0.0.1:9", token="x")  # a shown video never moves machines
    assert "new window" in w.status.text() and w.remote
    w.close_session()
