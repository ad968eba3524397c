"""Prompts that create objects, from the widget: the find row (a text, a threshold, Find, Everything),
exemplar boxes, and re-detection during propagation.

A mixin of :class:`samtrack.viewer._widget.SamtrackWidget`. Each action is one session call
(``add_text``, ``add_exemplars``, ``segment_everything``, ``propagate_and_redetect``) run in the
widget's worker thread, as propagation is, so a detector that takes seconds never freezes the UI.
The model family decides what it can do: the session's :class:`~samtrack.errors.PromptError`
(text on a SAM2 model, "everything" on SAM3) is shown in the status line.
"""
from __future__ import annotations

import numpy as np

FIND_TIP = ("Find every instance of the text ('cell') on this frame; each new one becomes an object (SAM3 models). "
            "With exemplar boxes drawn (Exemplar boxes on), Find uses them too, with or without a text.")
EVERYTHING_TIP = ("Segment every object on this frame, each a new object (SAM2 / SAM2.1 models: the automatic mask "
                  "generator); the threshold is then the predicted IoU a mask needs (0.8 by default)")
THRESHOLD_TIP = "score a detection needs, 0..1 (Find: 0.5 by default; Everything: predicted IoU, 0.8 by default)"
EXEMPLAR_TIP = ("While on, Shift-drag draws a positive exemplar box (an object like the ones to find) and "
                "Shift-Ctrl-drag (or Shift-Alt-drag) a negative one, instead of a box prompt; Find uses this "
                "frame's exemplars. Turning it off forgets them.")
REDETECT_TIP = ("0: off. N: while propagating, run this job's finds again every N frames from the frame each was "
                "given on, adding objects that appear later (matched to tracked ones by mask overlap)")


class FindInput:
    """``find`` (text and/or exemplars), ``find_everything``, exemplar boxes, re-detection every N frames."""

    exemplars: list  # (frame, (x0, y0, x1, y1) video pixels, label 1 positive / 0 negative)
    _done_text: str | None  # what the status line says when the running worker finishes

    # -- the find row ------------------------------------------------------------------------
    def find(self, text: str | None = None, *, threshold: float | None = None):
        """Find objects on the current frame: ``text`` (default: the text box) and, in exemplar mode,
        this frame's exemplar boxes. Runs in the worker thread; returns the worker (None when refused)."""
        if not self._editable():
            return None
        text = (self.find_text.text() if text is None else text).strip() or None
        thr = float(self.spin_find.value() if threshold is None else threshold)
        f, s = self.frame, self.session
        mine = [(box, lab) for fr, box, lab in self.exemplars if fr == f] if self.exemplar_mode else []
        boxes, labels = [list(b) for b, _ in mine], [lab for _, lab in mine]
        if mine and text is None:
            call = lambda: s.add_exemplars(f, boxes, labels, threshold=thr)  # noqa: E731
        elif mine:
            call = lambda: s.add_text(f, text, boxes=boxes, box_labels=labels, threshold=thr)  # noqa: E731
        else:
            call = lambda: s.add_text(f, text, threshold=thr)  # noqa: E731
        what = " and ".join(([repr(text)] if text else []) + ([f"{len(mine)} exemplar boxes"] if mine else []))
        return self._find_in_worker(call, f"finding {what or 'objects'} on frame {f}...")

    def find_everything(self, *, threshold: float | None = None):
        """Every object on the current frame as a new object (SAM2 models). Runs in the worker thread."""
        if not self._editable():
            return None
        thr = float(self.spin_find.value() if threshold is None else threshold)
        f, s = self.frame, self.session
        return self._find_in_worker(lambda: s.segment_everything(f, threshold=thr),
                                    f"segmenting everything on frame {f}...")

    def _find_in_worker(self, call, message: str):
        from napari.qt.threading import create_worker

        w = create_worker(call, _start_thread=False, _ignore_errors=True)
        w.returned.connect(self._on_found)
        return self._start_worker(w, message)

    def _on_found(self, found) -> None:
        n, m = len(found.created), len(found.matched)
        self._done_text = (f"frame {found.frame}: found {n} new object{'' if n == 1 else 's'} "
                           f"({m} already tracked)")
        if found.created:
            self._sync_objects()
            self.set_active(found.created[0])

    def _sync_objects(self) -> None:
        """The object list shows exactly the result store's objects (finds and re-detection add some)."""
        from qtpy.QtCore import Qt

        ids = self.results.object_ids
        shown = {self.objects.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.objects.count())}
        for oid in ids:
            if oid not in shown:
                self._list_item(oid)
        for i in reversed(range(self.objects.count())):
            if self.objects.item(i).data(Qt.ItemDataRole.UserRole) not in ids:
                self.objects.takeItem(i)
        self._update_colormap()

    def _default_find_threshold(self) -> None:
        """A SAM2 model only has "everything", whose threshold is a predicted IoU (0.8 by default)."""
        family = getattr(getattr(self.session, "backend", None), "family", None)
        self.spin_find.setValue(0.8 if family == "sam2" else 0.5)

    # -- exemplar boxes ----------------------------------------------------------------------
    @property
    def exemplar_mode(self) -> bool:
        return self.btn_exemplar.isChecked()

    def _on_exemplar_mode(self, on: bool) -> None:
        if not on and self.exemplars:
            self.exemplars.clear()
            self.refresh_frame()
        self._say("exemplar boxes: Shift-drag positive, Shift-Ctrl-drag negative; then Find" if on
                  else "exemplar mode off: Shift-drag draws box prompts again")

    def add_exemplar(self, x0: float, y0: float, x1: float, y1: float, *, positive: bool = True) -> None:
        """An exemplar box (video pixels) on the current frame, for the next Find."""
        if not self._editable():
            return
        box = (float(min(x0, x1)), float(min(y0, y1)), float(max(x0, x1)), float(max(y0, y1)))
        self.exemplars.append((self.frame, box, int(positive)))
        labs = [lab for fr, _, lab in self.exemplars if fr == self.frame]
        self.refresh_frame()
        self._say(f"frame {self.frame}: {sum(labs)} positive, {len(labs) - sum(labs)} negative exemplar boxes "
                  "(Find uses them)")

    def clear_exemplars(self) -> None:
        self.exemplars.clear()
        self.refresh_frame()

    def _show_exemplars(self) -> None:
        mine = [(b, lab) for fr, b, lab in self.exemplars if fr == self.frame]
        self.exemplar_layer.data = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) for (x0, y0, x1, y1), _ in mine]
        if mine:
            self.exemplar_layer.edge_color = ["#00ff00" if lab else "#ff3030" for _, lab in mine]

    # -- re-detection ------------------------------------------------------------------------
    def _redetect_every(self, obj_ids) -> int:
        """N when this propagation re-runs the job's finds every N frames (0: a plain propagation)."""
        n = int(self.spin_redetect.value())
        return n if n > 0 and obj_ids is None and self.session.concepts else 0
