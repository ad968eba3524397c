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


def test_cli_screenshot_of_a_track_result_and_read_only_view(make_napari_viewer, assets, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from samtrack.cli import app
    from samtrack.job import run_track

    ck, vid = assets
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 2, "points": [[40, 50]], "labels": [1]}]}]}))
    out = tmp_path / "job"
    run_track(vid, prompts, out, checkpoint=str(ck), image_size=S, device="cpu", direction="forward").close()
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
