"""The samtrack dock widget: objects (``_objects``), prompts by click / box / paint (``_prompting``),
object-creating prompts (text, exemplar boxes, everything: ``_finding``), a model picker (``_models``),
a server (``_remote``), propagation in a worker thread, corrections, timeline, confidence plot, save and
export.

All model work goes through :class:`samtrack.session.TrackingSession`. The session is not
thread-safe, so while a propagation or a find runs in the worker thread, prompts and edits are
refused (with a message) and only the display reads results.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QFileDialog, QWidget

from samtrack.errors import SamtrackError
from samtrack.io.result_store import Status
from samtrack.viewer._finding import FindInput
from samtrack.viewer._frames import LazyVideo
from samtrack.viewer._models import ModelPicker
from samtrack.viewer._objects import ObjectList
from samtrack.viewer._panels import build_panels
from samtrack.viewer._plots import confidence, low_confidence_frames
from samtrack.viewer._prompting import PromptInput
from samtrack.viewer._remote import RemoteInput

log = logging.getLogger(__name__)

class SamtrackWidget(RemoteInput, ModelPicker, FindInput, PromptInput, ObjectList, QWidget):
    """Dock widget. ``napari_viewer`` is filled in by napari when opened from the plugin menu."""

    def __init__(self, napari_viewer, session=None, *, results=None, frames=None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session
        self.results = session.results if session is not None else results
        self.frames = session.frames if session is not None else frames
        self.read_only: str | None = None  # why no session (no weights, the folder in use elsewhere)
        self.active: int | None = None
        self.positive = True
        self.worker = None
        self.low_conf = 0.5
        self._last_plot = 0.0
        self._updating_labels = False
        self._paint_undo: list = []  # paint corrections, for Ctrl-Z / Ctrl-Shift-Z
        self._paint_redo: list = []
        self.exemplars: list = []  # (frame, (x0, y0, x1, y1) video pixels, 1 positive / 0 negative)
        self._done_text: str | None = None  # the status line when the running worker finishes
        self._open_options: dict = {}  # how the shown video was opened: reused when the model changes
        self._model_folders: dict = {}  # model name -> checkpoint and session folder opened in this widget
        self.image_layer = self.labels_layer = self.points_layer = self.box_layer = self.exemplar_layer = None
        build_panels(self)
        if self.frames is not None:
            self._attach()

    # ------------------------------------------------------------------ UI
    # ------------------------------------------------------------------ layers
    def _attach(self) -> None:
        v, info = self.viewer, self.frames.info
        self.image_layer = v.add_image(LazyVideo(self.frames), name="video", rgb=True, contrast_limits=(0, 255),
                                       multiscale=False)
        self.labels_layer = v.add_labels(np.zeros((info.height, info.width), np.uint32), name="masks", opacity=0.5)
        self.labels_layer.events.paint.connect(self._on_paint)
        self.points_layer = v.add_points(np.zeros((0, 2)), ndim=2, name="prompts", size=max(6, info.width // 80),
                                         face_color="#00ff00", border_color="white")
        self.box_layer = v.add_shapes(ndim=2, name="boxes", face_color="transparent", edge_color="yellow",
                                      edge_width=max(1, info.width // 400))
        self.exemplar_layer = v.add_shapes(ndim=2, name="exemplars", face_color="transparent", edge_color="#00ff00",
                                           edge_width=max(1, info.width // 300))
        v.layers.selection.active = self.image_layer
        self.goto(0)  # napari starts in the middle of an axis; a video starts at its first frame
        v.dims.events.current_step.connect(self._on_step)
        v.mouse_drag_callbacks.append(self._on_mouse)
        self._bind_keys()
        mode = "results only (no model)"
        if self.session is not None:
            spec, ckpt = self.session.backend.spec, getattr(self.session.backend, "checkpoint", None)
            mode = f"{spec.name}, session: {self.session.workdir}"
            self._model_folders.setdefault(spec.name, {"checkpoint": ckpt, "workdir": self.session.workdir})
        self.fill_models()  # marks the open model
        self._default_find_threshold()
        self.info.setText(f"{info.n_frames} frames, {info.width}x{info.height} ({info.dtype}); {mode}")
        ids = self.results.object_ids
        for oid in ids:
            self._list_item(oid)
        if ids:
            self.set_active(ids[0])
        self._update_colormap()
        self.refresh()
        self._set_running(False)

    def _bind_keys(self) -> None:
        v = self.viewer
        binds = {"]": lambda: self.goto_keyframe(1), "[": lambda: self.goto_keyframe(-1),
                 "Shift-F": lambda: self.propagate("forward"), "Shift-B": lambda: self.propagate("backward"),
                 "Shift-D": lambda: self.propagate("both"), "Shift-K": lambda: self.propagate("next"),
                 "Escape": self.cancel, "T": self.toggle_polarity, "Shift-N": lambda: self.add_object(),
                 "Shift-L": lambda: self.next_low_confidence(),
                 "Control-Z": self.undo_paint, "Control-Shift-Z": self.redo_paint}
        for key, fn in binds.items():
            v.bind_key(key, lambda _viewer, fn=fn: fn(), overwrite=True)
        # the labels layer's own undo would change the picture behind the session's back
        for key, fn in (("Control-Z", self.undo_paint), ("Control-Shift-Z", self.redo_paint)):
            self.labels_layer.bind_key(key, lambda _layer, fn=fn: fn(), overwrite=True)

    @property
    def frame(self) -> int:
        return int(self.viewer.dims.current_step[0])

    @property
    def n_frames(self) -> int:
        return self.frames.info.n_frames

    def goto(self, f: int) -> None:
        step = list(self.viewer.dims.current_step)
        step[0] = int(np.clip(f, 0, self.n_frames - 1))
        self.viewer.dims.current_step = tuple(step)

    def _on_step(self, event=None) -> None:
        self.refresh_frame()
        self.timeline.set_current(self.frame)
        self.plot.set_current(self.frame)

    # ------------------------------------------------------------------ propagation
    @property
    def busy(self) -> bool:
        return self.worker is not None

    def propagate(self, direction: str = "forward", *, obj_ids=None):
        """Run a propagation in a worker thread; masks appear as frames complete.
        ``direction``: forward, backward, both, or next (forward to the next keyframe). With
        "re-detect every N" set and a find in the job, the finds run again every N frames
        (``session.propagate_and_redetect``) and the objects they add appear in the list."""
        from napari.qt.threading import create_worker

        if not self._editable():
            return None
        start = stop = None
        d = direction
        if direction == "next":
            keys = sorted({k for oid in self.session.obj_ids for k in self.session.keyframes(oid)})
            later = [k for k in keys if k > self.frame]
            start, stop, d = self.frame, (later[0] if later else self.n_frames - 1), "forward"
        session, every = self.session, self._redetect_every(obj_ids)

        def run():
            box = {"done": 0, "total": 1}

            def progress(done, total):
                box["done"], box["total"] = done, total

            results = (session.propagate_and_redetect(every, d, start, stop, progress=progress) if every else
                       session.propagate(d, start, stop, obj_ids=obj_ids, progress=progress))
            for r in results:
                yield r.frame_idx, box["done"], box["total"]
            yield None, box["total"], box["total"]

        try:  # fail here, in the UI thread, on nothing to do
            if not every and not any(session.keyframes(oid) for oid in (obj_ids or session.obj_ids)):
                from samtrack.errors import NoPromptsError

                raise NoPromptsError("no prompts yet: click on the object first")
        except SamtrackError as e:
            self._say(f"error: {e}")
            return None
        w = create_worker(run, _start_thread=False, _ignore_errors=True)
        w.yielded.connect(self._on_progress)
        self.progress.setValue(0)
        again = f", finding again every {every} frames" if every else ""
        return self._start_worker(w, f"propagating {direction}{again}...")

    def _start_worker(self, w, message: str):
        """Start napari worker ``w`` (a propagation or a find): edits are refused until it finishes."""
        w.errored.connect(self._on_error)
        w.finished.connect(self._on_finished)
        self.worker = w
        self._done_text = None
        self._set_running(True)
        self._say(message)
        w.start()
        return w

    def cancel(self) -> None:
        if self.session is not None and self.busy:
            self.session.cancel()
            self._say("cancelling...")

    def _on_progress(self, item) -> None:
        f, done, total = item
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(done)
        if len(self.results.object_ids) != self.objects.count():  # re-detection added objects: list, colour them
            self._sync_objects()
        if f is not None and f == self.frame:
            self.refresh_frame()
        if time.monotonic() - self._last_plot > 0.25:
            self.refresh_plots()

    def _on_error(self, exc) -> None:
        self._say(f"error: {exc}")
        if not isinstance(exc, SamtrackError):  # a user's mistake is said in words; anything else is a bug
            log.error("worker failed", exc_info=exc)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        self._sync_objects()  # a find or a re-detection adds objects
        self.refresh()
        if not self.status.text().startswith("error"):
            self._say(self._done_text or "done")

    def _set_running(self, running: bool) -> None:
        """Edit buttons work with a session and no propagation running; Cancel only while one runs."""
        for b in (self.btn_fwd, self.btn_bwd, self.btn_both, self.btn_next, self.btn_add, self.btn_remove,
                  self.btn_clear, self.btn_color, self.btn_parent, self.btn_save, self.btn_find, self.btn_everything):
            b.setEnabled(not running and self.session is not None)
        self.btn_export.setEnabled(not running)  # an export while masks are being written would mix passes
        self.btn_cancel.setEnabled(running)

    # ------------------------------------------------------------------ navigation
    def keyframes(self) -> list[int]:
        if self.session is None:
            return sorted({f for oid in self.results.object_ids
                           for f in np.flatnonzero(self.results.status(oid) == Status.PROMPTED).tolist()})
        return sorted({k for oid in self.session.obj_ids for k in self.session.keyframes(oid)})

    def goto_keyframe(self, step: int) -> int | None:
        keys, f = self.keyframes(), self.frame
        cand = [k for k in keys if k > f] if step > 0 else [k for k in keys if k < f][::-1]
        if cand:
            self.goto(cand[0])
            return cand[0]
        self._say("no keyframe " + ("after" if step > 0 else "before") + " this frame")
        return None

    def confidence(self, oid: int) -> tuple[np.ndarray, np.ndarray]:
        return confidence(self.results, oid)

    def low_confidence_frames(self) -> np.ndarray:
        return low_confidence_frames(self.results, self.low_conf)

    def next_low_confidence(self) -> int | None:
        frames = self.low_confidence_frames()
        later = frames[frames > self.frame]
        if len(later):
            self.goto(int(later[0]))
            self._say(f"frame {int(later[0])}: low confidence ({len(frames)} such frames)")
            return int(later[0])
        self._say("no low-confidence frame after this one")
        return None

    def _on_threshold(self, v: float) -> None:
        self.low_conf = float(v)
        self.refresh_plots()

    # ------------------------------------------------------------------ display
    def refresh(self) -> None:
        self.refresh_frame()
        self.refresh_plots()

    def refresh_frame(self) -> None:
        if self.labels_layer is None:
            return
        f = self.frame
        self._updating_labels = True
        try:
            self.labels_layer.data = self.results.label_frame(f).astype(np.uint32)
        finally:
            self._updating_labels = False
        pts, colors, boxes = [], [], []
        if self.session is not None:
            for oid in self.session.obj_ids:
                p = self.session.prompt_at(f, oid)
                if p is None or p.kind != "points":
                    continue
                for (x, y), lab in zip(p.points, p.labels):
                    pts.append((y, x))
                    colors.append("#00ff00" if lab else "#ff3030")
                if p.box is not None:
                    x0, y0, x1, y1 = p.box
                    boxes.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]))
        self.points_layer.data = np.array(pts).reshape(-1, 2)
        if pts:
            self.points_layer.face_color = colors
        self.box_layer.data = boxes
        self._show_exemplars()

    def refresh_plots(self) -> None:
        self._last_plot = time.monotonic()
        rows, curves = [], []
        for oid in self.results.object_ids:
            color = QColor(*self.object_color(oid))
            keys = self.session.keyframes(oid) if self.session is not None else []
            rows.append((color, self.results.status(oid), keys))
            p, q = self.confidence(oid)
            curves.append((color, p, q))
        self.timeline.set_rows(self.n_frames, rows)
        self.plot.set_curves(self.n_frames, curves, self.low_conf)

    def _say(self, text: str) -> None:
        self.status.setText(text)
        log.info("%s", text)

    # ------------------------------------------------------------------ save / export
    def save(self) -> Path | None:
        if self.session is None:
            return None
        self.session.flush()
        self._say(f"saved in {self.session.workdir}")
        return Path(self.session.workdir)

    def export(self, fmt: str, output, *, force: bool = False, allow_incomplete: bool = False) -> Path:
        from samtrack.errors import InvalidOptionError
        from samtrack.io.export import export

        if self.busy:
            raise InvalidOptionError("a propagation is running: export when it has finished (or cancel it)")
        if self.session is not None:  # local or remote: the session writes (a remote one downloads the output)
            rep = self.session.export(fmt, output, force=force, allow_incomplete=allow_incomplete)
        else:
            rep = export(self.results, fmt, output, force=force, allow_incomplete=allow_incomplete, frames=self.frames)
        self._say("; ".join((rep.summary(),) + rep.warnings))
        return rep.path

    def _export_dialog(self) -> None:
        fmt = self.fmt.currentText()
        path, _ = QFileDialog.getSaveFileName(self, f"Export {fmt}", "")
        if path:
            try:
                self.export(fmt, path, force=True, allow_incomplete=self.cb_incomplete.isChecked())
            except SamtrackError as e:
                self._say(f"error: {e}")

    def open(self, source, **kw) -> None:
        """Open ``source`` in this widget (see :func:`samtrack.viewer.open_for_viewing`)."""
        from samtrack.viewer import open_for_viewing

        if self.frames is not None:
            self._say("this widget already shows a video: open another in a new window")
            return
        try:
            self.session, self.results, self.frames, self.read_only = open_for_viewing(source, **kw)
        except SamtrackError as e:
            self._say(f"error: {e}")
            return
        self._open_options = {k: v for k, v in kw.items() if k not in ("model", "checkpoint", "workdir", "result")}
        if self.session is None:  # choosing the model later opens this folder (the job), not the model's default one
            self._keep_read_only_folder(result=kw.get("result"), workdir=kw.get("workdir"), model=kw.get("model"),
                                        checkpoint=kw.get("checkpoint"))
        self._attach()

    def _open_dialog(self) -> None:
        if self.server_edit.text().strip():  # a server named: the video is a path on it
            self._open_server_dialog()
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open a video, TIFF stack or image", "")
        if not path:
            path = QFileDialog.getExistingDirectory(self, "Or open an image folder", "")
        if path:
            self.open(path, model=self.model_box.currentData())

    def close_session(self) -> None:
        """Stop a running propagation (its finished frames are kept), then close the session."""
        if self.busy:
            from qtpy.QtWidgets import QApplication

            self.session.cancel()
            end = time.monotonic() + 600  # a hang guard: one frame can take seconds on a CPU at 1024 px
            while self.busy and time.monotonic() < end:  # the worker stops at its next frame
                QApplication.processEvents()
                time.sleep(0.01)
            if self.busy:  # never close the stores under a running worker
                log.error("the propagation did not stop within 10 minutes; the session is left open")
                return
        remote = self.remote
        if self.session is not None:
            self.session.close()
            self.session = None
        elif self.frames is not None:
            self.frames.close()
        self._drop_client()
        if remote and self.image_layer is not None:  # the video and results lived on the server: nothing to show
            self._detach()
            self.frames = self.results = None
