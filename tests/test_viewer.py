"""The napari viewer, driven as a user would (Xvfb via pytest-xvfb, napari's make_napari_viewer).

Clicks go through napari's own mouse-callback dispatch, buttons are clicked, paint strokes use
the labels layer's paint tool; propagation runs in the widget's worker thread.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari", reason="the viewer extra is not installed (make setup installs it)")

from napari.utils._test_utils import read_only_mouse_event  # noqa: E402
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks  # noqa: E402

from samtrack.io.result_store import Status  # noqa: E402
from samtrack.viewer import view  # noqa: E402
from tests import media  # noqa: E402
from tests import model_utils as mu  # noqa: E402

pytestmark = pytest.mark.gui
N, W, H, S = 24, 128, 96, 128


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer")
    return mu.make_checkpoint(tmp / "ck.pt", image_size=S), media.write_video(tmp / "v.mp4", N, w=W, h=H)


def _open(make_napari_viewer, assets, workdir, show=False):
    ck, vid = assets
    viewer = make_napari_viewer(show=show)
    _, w = view(vid, checkpoint=ck, image_size=S, device="cpu", workdir=workdir, viewer=viewer)
    return viewer, w


def _click(viewer, x, y, modifiers=()):
    t = viewer.dims.current_step[0]
    ev = read_only_mouse_event(type="mouse_press", button=1, position=(t, y, x), modifiers=list(modifiers))
    mouse_press_callbacks(viewer, ev)
    mouse_release_callbacks(viewer, read_only_mouse_event(type="mouse_release", button=1, position=(t, y, x),
                                                          modifiers=list(modifiers)))


def _drag(viewer, p0, p1, modifiers=("Shift",)):
    t = viewer.dims.current_step[0]
    (x0, y0), (x1, y1) = p0, p1
    mouse_press_callbacks(viewer, read_only_mouse_event(type="mouse_press", button=1, position=(t, y0, x0),
                                                        modifiers=list(modifiers)))
    from napari.utils.interactions import mouse_move_callbacks

    mouse_move_callbacks(viewer, read_only_mouse_event(type="mouse_move", button=1, is_dragging=True,
                                                       position=(t, (y0 + y1) / 2, (x0 + x1) / 2),
                                                       modifiers=list(modifiers)))
    mouse_release_callbacks(viewer, read_only_mouse_event(type="mouse_release", button=1, position=(t, y1, x1),
                                                          modifiers=list(modifiers)))


def _wait(qtbot, w, timeout=240_000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def _masks(w, oid):
    return np.stack([w.results.mask(f, oid) for f in range(N)])


def _state(w):
    s = w.session
    return {oid: (s.status(oid).copy(), _masks(w, oid), s.keyframes(oid), w.results.object_meta(oid))
            for oid in s.obj_ids}


def test_click_propagate_correct_repropagate_save_reopen(make_napari_viewer, assets, tmp_path, qtbot):
    viewer, w = _open(make_napari_viewer, assets, tmp_path / "session")
    w.goto(8)
    w.btn_add.click()
    _click(viewer, 40, 50)
    _click(viewer, 90, 20, modifiers=["Control"])  # a negative click refines the same object
    w.btn_add.click()
    _click(viewer, 100, 60)
    s = w.session
    assert s.obj_ids == [1, 2]
    p = s.prompt_at(8, 1)
    assert p.labels == (1, 0) and p.points == ((40.0, 50.0), (90.0, 20.0))
    assert (s.status(1)[8], s.status(2)[8]) == (Status.PROMPTED, Status.PROMPTED)
    # the frame's masks are shown at once, in the object colours
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(8))
    assert len(w.points_layer.data) == 3

    w.btn_both.click()
    assert w.busy
    assert not w.btn_export.isEnabled()  # no export of half-written results
    _wait(qtbot, w)
    assert w.btn_export.isEnabled()
    for oid in (1, 2):
        st = s.status(oid)
        assert (st[:8] == Status.PROPAGATED).all() and (st[9:] == Status.PROPAGATED).all()
    before = {oid: _masks(w, oid) for oid in (1, 2)}

    # correction: paint object 1 on frame 16 (a tracked frame) with the labels layer's brush
    w.goto(16)
    w.labels_layer.selected_label = 1
    w.labels_layer.brush_size = 20
    w.labels_layer.paint((30, 30), 1)  # (row, col): a disc at x=30, y=30
    painted = np.asarray(w.labels_layer.data) == 1  # the frame as the user sees it after the stroke
    qtbot.waitUntil(lambda: w.session.keyframes(1) == [8, 16], timeout=10_000)
    assert painted[30, 30] and painted.sum() > 200
    assert s.keyframes(1) == [8, 16] and s.status(1)[16] == Status.PROMPTED
    np.testing.assert_array_equal(w.results.mask(16, 1), painted)
    stale = np.flatnonzero(s.status(1) == Status.STALE)
    assert len(stale) and stale.min() > 8  # frames before the midpoint stay valid

    s.backend.calls["track"].clear()
    w.btn_both.click()
    _wait(qtbot, w)
    recomputed = sorted(s.backend.calls["track"])
    assert recomputed and min(recomputed) >= 12 and max(recomputed) == N - 1  # nearer-keyframe span of frame 16
    assert sum(s.backend.calls["track"].values()) == len(recomputed)  # one object: object 2 is not rerun
    after1, after2 = _masks(w, 1), _masks(w, 2)
    np.testing.assert_array_equal(after2, before[2])
    np.testing.assert_array_equal(after1[:12], before[1][:12])  # outside the affected span: kept
    np.testing.assert_array_equal(after1[16], painted)  # the correction sticks
    assert (s.status(1) != Status.STALE).all()

    # save, close, reopen the same workdir: same objects, prompts, keyframes and masks
    w.rename_object(2, "cell-b")
    w.recolor_object(2, (10, 200, 250))
    w.set_parent(2, 1)
    w.btn_save.click()
    want = _state(w)
    w.close_session()
    viewer2, w2 = _open(make_napari_viewer, assets, tmp_path / "session")
    got = _state(w2)
    assert sorted(got) == sorted(want)
    for oid in want:
        np.testing.assert_array_equal(got[oid][0], want[oid][0])
        np.testing.assert_array_equal(got[oid][1], want[oid][1])
        assert got[oid][2] == want[oid][2] and got[oid][3] == want[oid][3]
    assert w2.results.object_meta(2)["name"] == "cell-b" and w2.results.object_meta(2)["parent"] == 1
    assert w2.session.prompt_at(8, 1).labels == (1, 0)
    # nothing is left to compute after reopening
    w2.session.backend.calls["track"].clear()
    list(w2.session.propagate("both"))
    assert not w2.session.backend.calls["track"]
    w2.close_session()


def test_box_drag_navigation_low_confidence_and_export(make_napari_viewer, assets, tmp_path, qtbot):
    viewer, w = _open(make_napari_viewer, assets, tmp_path / "session")
    w.goto(4)
    _drag(viewer, (20, 20), (70, 60))  # shift-drag: a box for a new object
    p = w.session.prompt_at(4, 1)
    assert p.box == (20.0, 20.0, 70.0, 60.0) and p.points == ()
    w.goto(14)
    _click(viewer, 50, 40)
    assert w.session.keyframes(1) == [4, 14]
    w.goto(0)
    assert w.goto_keyframe(1) == 4 and w.goto_keyframe(1) == 14 and w.goto_keyframe(1) is None
    assert w.goto_keyframe(-1) == 4
    # the shortcuts listed in the widget are bound, and do what the list says
    from app_model.types import KeyBinding

    from samtrack.viewer._panels import SHORTCUTS

    keys = [k for k, _ in SHORTCUTS if not any(m in k for m in ("click", "drag", "paint"))]
    assert len(keys) == 12
    bound = {str(KeyBinding.from_str(k)) for k in keys}
    assert bound <= {str(k) for k in viewer.keymap}, bound - {str(k) for k in viewer.keymap}

    def press(k):
        viewer.keymap[KeyBinding.from_str(k)](viewer)

    w.goto(0)
    press("]")
    assert w.frame == 4
    press("]")
    assert w.frame == 14
    press("[")
    assert w.frame == 4
    press("T")
    assert not w.positive and w.rb_neg.isChecked()
    press("T")
    assert w.positive
    # to the next keyframe: from frame 4 forward, stops at 14
    w.propagate("next")
    _wait(qtbot, w)
    st = w.session.status(1)
    assert (st[5:14] == Status.PROPAGATED).all() and (st[15:] == Status.NOT_RUN).all() and (st[:4] == 0).all()
    # low-confidence navigation follows the stored scores and the threshold
    score, iou = w.results.scores(1)
    w.spin_thr.setValue(1.0)  # everything computed is "low"
    w.goto(0)
    assert w.next_low_confidence() == 4
    w.spin_thr.setValue(0.0)
    assert w.next_low_confidence() is None
    w.goto(0)
    presence, q = w.confidence(1)
    assert np.isnan(presence[0]) and np.isfinite(presence[4]) and np.isclose(presence[4], 1 / (1 + np.exp(-score[4])))
    # export from the widget: refused while frames are missing, then written with the option
    from samtrack.io.export import ExportError

    with pytest.raises(ExportError, match="not computed"):
        w.export("tiff", tmp_path / "l.tif")
    out = w.export("tiff", tmp_path / "l.tif", allow_incomplete=True)
    import tifffile

    lab = tifffile.imread(out)
    assert lab.shape == (N, H, W)
    np.testing.assert_array_equal(lab[9] == 1, w.results.mask(9, 1))
    w.close_session()


def test_ui_stays_responsive_during_propagation(make_napari_viewer, assets, tmp_path, qtbot):
    from qtpy.QtCore import QTimer

    viewer, w = _open(make_napari_viewer, assets, tmp_path / "session")
    _click(viewer, 40, 50)
    w.btn_fwd.click()
    seen = {}

    def ui_event():  # runs in the Qt event loop: handled only if propagation does not block it
        seen["busy"] = w.busy
        seen["done"] = w.progress.value()
        w.goto(3)  # scrubbing while tracking reads the cache and the results
        seen["frame"] = w.frame

    QTimer.singleShot(0, ui_event)
    qtbot.waitUntil(lambda: "busy" in seen, timeout=5000)
    assert seen["busy"] and seen["frame"] == 3
    _click(viewer, 60, 60)  # a prompt while tracking is refused, with a message
    assert "propagation is running" in w.status.text()
    qtbot.waitUntil(lambda: w.progress.value() >= 5, timeout=120_000)
    w.btn_cancel.click()
    _wait(qtbot, w)
    st = w.session.status(1)
    done = int((st == Status.PROPAGATED).sum())
    assert 3 <= done < N - 1, (st, w.progress.value(), w.status.text())  # stopped early; finished frames kept
    assert w.session.prompt_at(0, 1).points == ((40.0, 50.0),)
    # closing while a propagation runs stops it first; what it finished is on disk
    w.btn_both.click()
    assert w.busy
    s = w.session
    w.close_session()
    assert w.session is None and not w.busy and s.results.status(1)[0] == Status.PROMPTED


def _canvas_xy(viewer, shot, row, col):
    """Screen pixel of data pixel (row, col) in a canvas-only screenshot."""
    zoom = viewer.camera.zoom
    cy, cx = viewer.camera.center[-2:]
    h, w = shot.shape[:2]
    return int(round((row - cy) * zoom + h / 2)), int(round((col - cx) * zoom + w / 2))


def test_screenshot_shows_masks_over_the_frame(make_napari_viewer, assets, tmp_path, qtbot):
    viewer, w = _open(make_napari_viewer, assets, tmp_path / "session", show=True)
    w.goto(5)
    mask = np.zeros((H, W), bool)
    mask[30:70, 20:60] = True
    w.btn_add.click()
    w.paint_mask(mask)  # a mask prompt is stored exactly as given
    viewer.window.resize(1300, 800)
    qtbot.wait(200)  # let the dock widget and the canvas settle before fitting the frame
    viewer.reset_view()
    qtbot.wait(100)
    with_labels = viewer.screenshot(canvas_only=True, flash=False)
    w.labels_layer.visible = False
    qtbot.wait(50)
    without = viewer.screenshot(canvas_only=True, flash=False)
    r_in, c_in = _canvas_xy(viewer, with_labels, 50, 40)
    r_out, c_out = _canvas_xy(viewer, with_labels, 85, 110)
    diff_in = np.abs(with_labels[r_in, c_in, :3].astype(int) - without[r_in, c_in, :3]).sum()
    diff_out = np.abs(with_labels[r_out, c_out, :3].astype(int) - without[r_out, c_out, :3]).sum()
    assert diff_in > 30, (with_labels[r_in, c_in], without[r_in, c_in])
    assert diff_out <= 3
    # the tint goes toward the object's colour (red for object 1)
    assert with_labels[r_in, c_in, 0] > without[r_in, c_in, 0] or without[r_in, c_in, 0] > 240
    w.close_session()


def _tracked_job(assets, tmp_path):
    """A `samtrack track` job folder of the assets' video: object 1 prompted on frame 2, propagated forward."""
    import json

    from samtrack.job import run_track

    ck, vid = assets
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 2, "points": [[40, 50]], "labels": [1]}]}]}))
    out = tmp_path / "job"
    run_track(vid, prompts, out, checkpoint=str(ck), image_size=S, device="cpu", direction="forward").close()
    return out


def test_cli_screenshot_of_a_track_result_and_read_only_view(make_napari_viewer, assets, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from samtrack.cli import app

    ck, vid = assets
    out = _tracked_job(assets, tmp_path)
    png = tmp_path / "shot.png"
    r = CliRunner().invoke(app, ["view", str(vid), "--result", str(out), "--checkpoint", str(ck), "--frame", "6",
                                 "--screenshot", str(png)])
    assert r.exit_code == 0, r.output
    from PIL import Image

    im = np.asarray(Image.open(png))
    assert im.ndim == 3 and im.shape[0] > 200 and im.shape[1] > 300 and im.std() > 5
    # without weights the result opens read-only: shown, but prompting is refused with a message
    viewer = make_napari_viewer()
    _, w = view(vid, result=out, viewer=viewer)
    assert w.session is None and w.results.object_ids == [1]
    w.goto(6)
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(6))
    _click(viewer, 10, 10)
    assert "results only" in w.status.text() and w.results.status(1)[6] == Status.PROPAGATED
    w.close_session()
    # without weights and without a result: the video opens to browse, prompting is refused
    viewer2 = make_napari_viewer()
    _, w2 = view(vid, viewer=viewer2, workdir=tmp_path / "browse", download=False)
    assert w2.session is None and w2.frames is not None and w2.results.object_ids == []
    w2.goto(3)
    _click(viewer2, 10, 10)
    assert w2.results.object_ids == [] and w2.status.text()
    w2.close_session()


def test_a_job_another_session_writes_opens_read_only_saying_why(make_napari_viewer, assets, tmp_path):
    """``samtrack view --result job`` while a ``samtrack track`` still writes the job: the results so far are
    shown, prompting is refused naming the holder, and the tracker's folder is left alone."""
    import samtrack

    ck, vid = assets
    out = _tracked_job(assets, tmp_path)
    holder = samtrack.open_session(vid, checkpoint=str(ck), image_size=S, device="cpu", workdir=out)
    try:
        viewer = make_napari_viewer()
        _, w = view(vid, result=out, viewer=viewer, checkpoint=str(ck))
        assert w.session is None and "in use by another session of this process" in w.read_only
        assert w.results.object_ids == [1]
        w.goto(6)
        np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(6))
        _click(viewer, 10, 10)
        assert "results only" in w.status.text() and "in use" in w.status.text()
        w.close_session()
        holder.add_points(4, 2, [[20, 20]], [1])  # the holder goes on undisturbed
    finally:
        holder.close()
    viewer2 = make_napari_viewer()
    _, w2 = view(vid, result=out, viewer=viewer2, checkpoint=str(ck))  # free again: a session, with both objects
    assert w2.session is not None and w2.read_only is None and w2.session.obj_ids == [1, 2]
    w2.close_session()


def test_choosing_the_model_of_a_job_shown_read_only_opens_the_job_once_it_is_free(make_napari_viewer, assets,
                                                                                  tmp_path):
    """A job viewed read-only while another session wrote it: once that session is closed, choosing the job's
    model in the list opens the job's folder (its objects, prompting), not the model's default session folder
    (an empty session of the video, the job's results gone from the window)."""
    import samtrack
    from samtrack.job import read_job

    ck, vid = assets
    out = _tracked_job(assets, tmp_path)
    holder = samtrack.open_session(vid, checkpoint=str(ck), image_size=S, device="cpu", workdir=out)
    try:
        _, w = view(vid, result=out, viewer=make_napari_viewer(), checkpoint=str(ck))
        assert w.session is None and "in use" in w.read_only
        holder.add_points(4, 2, [[20, 20]], [1])
    finally:
        holder.close()
    assert w.choose_model(read_job(out)["model"]), w.status.text()
    assert w.session is not None and w.session.workdir == out, w.status.text()
    assert w.session.obj_ids == [1, 2] and w.results.object_ids == [1, 2]
    w.close_session()


def test_plugin_manifest_is_registered_and_opens_the_widget(make_napari_viewer):
    from npe2 import PluginManifest

    m = PluginManifest.from_distribution("samtrack")
    assert [c.python_name for c in m.contributions.commands] == ["samtrack.viewer._widget:SamtrackWidget"]
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("samtrack", "samtrack tracking")
    assert type(widget).__name__ == "SamtrackWidget" and widget.frames is None
    assert "Open" in widget.btn_open.text()


def test_cli_view_without_a_display_says_how_to_run_it(assets):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "samtrack.cli", "view", str(assets[1])], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "xvfb-run" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_paint_corrections_undo_and_redo_through_the_session(make_napari_viewer, assets, tmp_path, qtbot):
    from app_model.types import KeyBinding

    from samtrack.session.prompts import Mask, Points

    viewer, w = _open(make_napari_viewer, assets, tmp_path / "session")
    s = w.session
    w.goto(4)
    _drag(viewer, (20, 20), (70, 60))  # object 1: a box on frame 4
    w.goto(14)
    _click(viewer, 50, 40)
    w.goto(4)
    w.propagate("next")
    _wait(qtbot, w)
    assert s.status(1)[8] == Status.PROPAGATED

    def paint(frame):
        w.goto(frame)
        w.labels_layer.selected_label = 1
        w.labels_layer.brush_size = 16
        w.labels_layer.paint((60, 90), 1)
        qtbot.waitUntil(lambda: isinstance(s.prompt_at(frame, 1), Mask), timeout=10_000)
        return np.asarray(w.labels_layer.data) == 1

    painted8 = paint(8)  # a tracked frame becomes a keyframe
    paint(4)  # the box on keyframe 4 is replaced by a mask
    assert s.keyframes(1) == [4, 8, 14]

    def press(k, target):
        target.keymap[KeyBinding.from_str(k)](target)

    press("Control-Z", viewer)  # the last stroke first: frame 4 has its box again
    p4 = s.prompt_at(4, 1)
    assert isinstance(p4, Points) and p4.box == (20.0, 20.0, 70.0, 60.0) and w.frame == 4
    press("Control-Z", w.labels_layer)  # with the labels layer active: napari's own undo is replaced
    assert s.prompt_at(8, 1) is None and s.keyframes(1) == [4, 14] and w.frame == 8
    assert s.status(1)[8] == Status.STALE  # to be tracked again, not left as painted
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(8))
    assert not w.undo_paint()  # nothing left to undo
    press("Control-Shift-Z", viewer)
    p8 = s.prompt_at(8, 1)
    assert isinstance(p8, Mask)
    np.testing.assert_array_equal(p8.mask, painted8)
    np.testing.assert_array_equal(w.results.mask(8, 1), painted8)
    w.close_session()


# -- object-creating prompts and the model picker --------------------------------------------------
class Scripted:
    """The fake backend, whose detect() returns the squares (x0, y0, x1, y1, score) listed in ``plan``
    per frame (key -1: an "everything" request, which gets no frame features) and records requests."""

    def __init__(self, plan):
        import dataclasses

        from samtrack.session import backends
        from samtrack.session.models import get_model

        spec = dataclasses.replace(get_model("sam2.1_hiera_tiny"), name="fake", family="fake")
        self.inner = backends.load_backend(spec, None, image_size=64, device="cpu")
        self.plan = plan
        self.requests: list = []  # (frame or -1, DetectRequest)

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def detect(self, frame, feats, request):
        from samtrack.session.backends.base import Detection

        f = feats.frame_idx if feats is not None else -1
        self.requests.append((f, request))
        out = []
        for x0, y0, x1, y1, score in self.plan.get(f, []):
            m = np.zeros(frame.shape[:2], bool)
            m[y0:y1, x0:x1] = True
            out.append(Detection(m, (x0, y0, x1, y1), score))
        return out


def _scripted(make_napari_viewer, assets, tmp_path, plan):
    import samtrack

    backend = Scripted(plan)
    s = samtrack.open_session(assets[1], backend=backend, workdir=tmp_path / "job")
    viewer = make_napari_viewer()
    _, w = view(session=s, viewer=viewer)
    return viewer, w, backend


def _names(w):
    return [w.objects.item(i).text() for i in range(w.objects.count())]


def test_find_all_creates_objects_tracked_both_ways_with_redetection(make_napari_viewer, assets, tmp_path, qtbot):
    plan = {5: [(4, 4, 24, 20, 0.9), (90, 60, 120, 90, 0.8), (50, 10, 60, 20, 0.3)],
            11: [(100, 4, 124, 20, 0.9)],  # a cell that appears later: re-detection finds it
            -1: [(4, 70, 20, 90, 0.95)]}
    viewer, w, b = _scripted(make_napari_viewer, assets, tmp_path, plan)
    s = w.session
    w.goto(5)
    w.find_text.setText("cell")
    w.btn_find.click()
    assert w.busy and not w.btn_both.isEnabled()  # runs in the worker thread
    _wait(qtbot, w)
    assert w.status.text() == "frame 5: found 2 new objects (0 already tracked)"
    assert s.obj_ids == [1, 2] and _names(w) == ["cell 1", "cell 2"] and w.active == 1
    f, req = b.requests[-1]
    assert f == 5 and req.text == "cell" and req.threshold == 0.5 and req.boxes is None
    lab = np.asarray(w.labels_layer.data)  # shown at once, each in its own label
    assert (lab[4:20, 4:24] == 1).all() and (lab[60:90, 90:120] == 2).all() and not lab[10:20, 50:60].any()
    w.btn_find.click()  # the same query again adds nothing twice
    _wait(qtbot, w)
    assert w.status.text() == "frame 5: found 0 new objects (2 already tracked)" and s.obj_ids == [1, 2]

    w.spin_redetect.setValue(3)
    w.btn_both.click()
    _wait(qtbot, w)
    assert s.obj_ids == [1, 2, 3] and _names(w) == ["cell 1", "cell 2", "cell 3"]
    assert s.keyframes(3) == [11] and sorted({f for f, _ in b.requests if f not in (5,)}) == [2, 8, 11, 14, 17, 20, 23]
    for oid in (1, 2, 3):  # each tracked over the whole video, both ways from where it was found
        st = s.status(oid)
        assert (st != Status.NOT_RUN).all() and (st != Status.STALE).all(), (oid, st)
    w.goto(0)
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(0))
    assert set(np.unique(w.labels_layer.data)) - {0}
    w.goto(11)
    assert (np.asarray(w.labels_layer.data)[4:20, 100:124] == 3).all()

    w.goto(20)  # "everything" is the same kind of prompt
    w.spin_find.setValue(0.9)
    w.btn_everything.click()
    _wait(qtbot, w)
    req = b.requests[-1][1]
    assert req.everything and req.threshold == 0.9 and req.text is None
    assert w.status.text() == "frame 20: found 1 new object (0 already tracked)"
    assert s.obj_ids == [1, 2, 3, 4] and _names(w)[-1] == "object 1" and s.keyframes(4) == [20]
    w.close_session()


def test_exemplar_boxes_drawn_in_exemplar_mode_reach_the_session(make_napari_viewer, assets, tmp_path, qtbot):
    viewer, w, b = _scripted(make_napari_viewer, assets, tmp_path, {3: [(4, 4, 24, 20, 0.9)]})
    s = w.session
    w.goto(3)
    w.btn_exemplar.click()
    assert w.exemplar_mode
    _drag(viewer, (10, 12), (40, 30))  # Shift-drag: a positive exemplar
    _drag(viewer, (100, 80), (70, 50), modifiers=("Shift", "Control"))  # Shift-Ctrl-drag: negative (drawn backwards)
    assert s.obj_ids == [] and not b.requests  # no object, no box prompt, no model work yet
    assert len(w.exemplar_layer.data) == 2 and "1 positive, 1 negative" in w.status.text()
    w.btn_find.click()  # no text: the exemplars alone
    _wait(qtbot, w)
    f, req = b.requests[-1]
    assert f == 3 and req.text is None and req.threshold == 0.5
    np.testing.assert_allclose(req.boxes, [[10, 12, 40, 30], [70, 50, 100, 80]])
    assert req.box_labels.tolist() == [1, 0]
    assert s.obj_ids == [1] and _names(w) == ["exemplar 1"]
    w.find_text.setText("cell")  # with a text too
    w.btn_find.click()
    _wait(qtbot, w)
    req = b.requests[-1][1]
    assert req.text == "cell" and req.box_labels.tolist() == [1, 0] and len(req.boxes) == 2
    w.goto(4)  # exemplars belong to their frame
    assert len(w.exemplar_layer.data) == 0
    w.find_text.setText("")
    w.btn_find.click()  # nothing to find with on this frame: said in words
    _wait(qtbot, w)
    assert w.status.text().startswith("error:") and "exemplar box" in w.status.text()
    w.goto(3)
    w.btn_exemplar.click()  # off: the exemplars are forgotten and Shift-drag is a box prompt again
    assert not w.exemplar_mode and w.exemplars == [] and len(w.exemplar_layer.data) == 0
    _drag(viewer, (30, 30), (60, 50))
    assert s.prompt_at(3, w.active).box == (30.0, 30.0, 60.0, 50.0)
    w.close_session()


def test_a_text_prompt_on_a_sam2_model_is_refused_in_words(make_napari_viewer, assets, tmp_path, qtbot):
    viewer, w = _open(make_napari_viewer, assets, tmp_path / "session")
    assert w.spin_find.value() == 0.8  # SAM2 has "everything", whose threshold is a predicted IoU
    w.goto(2)
    w.find_text.setText("cell")
    w.btn_find.click()
    _wait(qtbot, w)
    text = w.status.text()
    assert text.startswith("error:") and "SAM3" in text and "everything" in text, text
    assert w.session.obj_ids == [] and w.objects.count() == 0 and w.btn_find.isEnabled()
    # "everything" runs sam2's automatic mask generator (random weights: any number of objects, often none)
    w.btn_everything.click()
    _wait(qtbot, w)
    import re

    found = re.fullmatch(r"frame 2: found (\d+) new objects? \(0 already tracked\)", w.status.text())
    assert found, w.status.text()
    assert w.objects.count() == len(w.session.obj_ids) == int(found.group(1))
    assert all(w.session.keyframes(o) == [2] for o in w.session.obj_ids)
    w.close_session()


def _pick(w, name):
    i = w.model_box.findData(name)
    assert i >= 0, name
    w.model_box.setCurrentIndex(i)
    w.model_box.activated.emit(i)  # what a user's choice in the list sends


def test_model_picker_lists_every_family_and_switches_models(make_napari_viewer, assets, tmp_path, qtbot,
                                                             monkeypatch):
    from samtrack.session.models import MODELS, get_model

    ck_dir = tmp_path / "checkpoints"
    ck_dir.mkdir()
    mu.make_checkpoint(ck_dir / "sam2_hiera_tiny.pt", model="sam2_hiera_tiny", image_size=S)
    monkeypatch.setenv("SAMTRACK_CHECKPOINTS", str(ck_dir))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # no user's hub cache
    viewer, w = _open(make_napari_viewer, assets, tmp_path / "session")
    box = w.model_box
    names = [box.itemData(i) for i in range(box.count())]
    labels = dict(zip(names, (box.itemText(i) for i in range(box.count()))))
    assert names == list(MODELS) and {get_model(n).family for n in names} == {"sam2", "sam2.1", "sam3"}
    assert labels["sam3"] == "sam3 (not downloaded)"
    assert labels["sam2.1_hiera_large"] == "sam2.1_hiera_large (not downloaded)"
    assert labels["sam2_hiera_tiny"] == "sam2_hiera_tiny"  # present
    assert labels["sam2.1_hiera_tiny"] == "sam2.1_hiera_tiny (default, open)"  # open from a --checkpoint file
    assert box.currentData() == "sam2.1_hiera_tiny"
    s1 = w.session
    w.goto(6)
    _click(viewer, 40, 50)
    _pick(w, "sam3")  # absent: how to get it; nothing else changes
    assert "samtrack models download sam3" in w.status.text() and "HF_TOKEN" in w.status.text()
    assert w.session is s1 and box.currentData() == "sam2.1_hiera_tiny"

    _pick(w, "sam2_hiera_tiny")  # present: the video reopens with it, in its own session folder
    s2 = w.session
    assert s2 is not s1 and s2.backend.spec.name == "sam2_hiera_tiny" and s2.obj_ids == [] and w.objects.count() == 0
    assert "reopened with sam2_hiera_tiny" in w.status.text() and w.frame == 6
    assert [layer.name for layer in viewer.layers] == ["video", "masks", "prompts", "boxes", "exemplars"]
    assert box.currentData() == "sam2_hiera_tiny" and s2.backend.image_size == S
    _click(viewer, 60, 60)  # prompting works in the new session
    assert s2.obj_ids == [1] and s2.prompt_at(6, 1).points == ((60.0, 60.0),)
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(6))

    _pick(w, "sam2.1_hiera_tiny")  # back: the first session's folder, objects and prompts
    s3 = w.session
    assert s3.backend.spec.name == "sam2.1_hiera_tiny" and s3.workdir == s1.workdir
    assert s3.obj_ids == [1] and s3.prompt_at(6, 1).points == ((40.0, 50.0),) and _names(w) == ["object-1"]
    w.close_session()


def test_find_all_with_a_real_tiny_sam3_through_the_viewer(make_napari_viewer, tmp_path, qtbot):
    """The find row with SAM3's own detector (a tiny random-init model, detector and object-score heads
    biased so it detects something): a text creates objects named after it, they propagate both ways
    in the worker thread, and the labels layer shows them."""
    from tests import sam3_models as s3

    ck = s3.make_detecting_checkpoint(tmp_path / "sam3_tiny_det.pt")
    n = 6
    vid = media.write_video(tmp_path / "v.mp4", n, w=W, h=H)
    viewer = make_napari_viewer()
    _, w = view(vid, model="sam3", checkpoint=ck, image_size=s3.IMAGE_SIZE, device="cpu", workdir=tmp_path / "job",
                viewer=viewer)
    s = w.session
    assert s.backend.family == "sam3"
    w.goto(2)
    w.find_text.setText("cell")
    w.spin_find.setValue(0.3)
    w.btn_find.click()
    _wait(qtbot, w)
    import re

    found = re.fullmatch(r"frame 2: found (\d+) new objects? \(0 already tracked\)", w.status.text())
    assert found and int(found.group(1)) >= 1, w.status.text()
    assert s.obj_ids and _names(w) == [f"cell {k}" for k in range(1, len(s.obj_ids) + 1)]
    assert all(s.keyframes(o) == [2] for o in s.obj_ids)
    w.btn_both.click()
    _wait(qtbot, w)
    for oid in s.obj_ids:
        st = s.status(oid)[:n]
        assert (st != Status.NOT_RUN).all(), (oid, st)
    w.goto(0)
    np.testing.assert_array_equal(w.labels_layer.data, w.results.label_frame(0))
    w.close_session()
