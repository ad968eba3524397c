"""Prompt input of the widget: clicks, Shift-drag boxes (exemplar boxes in exemplar mode), paint strokes
and their checks.

A mixin of :class:`samtrack.viewer._widget.SamtrackWidget`; it uses the widget's session,
layers, ``frame``, ``refresh`` and ``_say``.
"""
from __future__ import annotations

import numpy as np

from samtrack.errors import SamtrackError


def _modifiers(event) -> set[str]:
    """Names of the keys held during a mouse event (napari gives Key objects, tests give strings)."""
    return {getattr(m, "name", str(m)) for m in event.modifiers}


def _set_prompt(session, frame: int, obj_id: int, prompt) -> None:
    """Make ``prompt`` (a session prompt, or None) the prompt of ``obj_id`` on ``frame``."""
    from samtrack.session.prompts import Mask

    if prompt is None:
        session.clear_prompts(frame, obj_id)
    elif isinstance(prompt, Mask):
        session.add_mask(frame, obj_id, prompt.mask)
    elif prompt.box is not None:
        pts = [list(p) for p in prompt.points] or None
        session.add_box(frame, obj_id, list(prompt.box), points=pts, labels=list(prompt.labels) if pts else None)
    else:
        session.add_points(frame, obj_id, [list(p) for p in prompt.points], list(prompt.labels))


class PromptInput:
    _paint_undo: list  # (frame, object, prompt before the stroke); set by the widget
    _paint_redo: list

    def toggle_polarity(self) -> None:
        (self.rb_neg if self.positive else self.rb_pos).setChecked(True)
        self._say("clicks are now " + ("positive" if self.positive else "negative"))

    def _editable(self) -> bool:
        if self.session is None:
            self._say("viewing results only: " + (getattr(self, "read_only", None)
                                                  or "open with model weights to prompt and track"))
            return False
        if self.busy:
            self._say("a propagation is running: wait for it or cancel it (Escape) first")
            return False
        return True

    def _ensure_object(self) -> int | None:
        if self.active is None or self.active not in self.results.object_ids:
            return self.add_object()
        return self.active

    def click(self, x: float, y: float, positive: bool | None = None) -> None:
        """A point prompt at (x, y) video pixels on the current frame, added to the frame's clicks."""
        if not self._editable():
            return
        oid = self._ensure_object()
        pos = self.positive if positive is None else positive
        f = self.frame
        # clear=False keeps the frame's earlier clicks and box (the session merges them)
        self._run(lambda: self.session.add_points(f, oid, [[x, y]], [int(pos)], clear=False))

    def box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """A box prompt (replaces the frame's prompt for the active object)."""
        if not self._editable():
            return
        oid = self._ensure_object()
        f = self.frame
        self._run(lambda: self.session.add_box(f, oid, [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]))

    def paint_mask(self, mask: np.ndarray) -> None:
        """The active object's mask on the current frame becomes a mask prompt (a correction).

        Undoable: :meth:`undo_paint` (Ctrl-Z) gives the frame back the prompt it had."""
        if not self._editable():
            return
        oid = self._ensure_object()
        f = self.frame
        before = self.session.prompt_at(f, oid)
        if self._run(lambda: self.session.add_mask(f, oid, np.asarray(mask, bool))):
            self._paint_undo.append((f, oid, before))
            self._paint_redo.clear()

    def undo_paint(self) -> bool:
        """Undo the last paint correction: its frame gets back the prompt it had before (none: it
        stops being a keyframe and the frames that correction produced become stale)."""
        return self._paint_step(self._paint_undo, self._paint_redo, "undo")

    def redo_paint(self) -> bool:
        return self._paint_step(self._paint_redo, self._paint_undo, "redo")

    def _paint_step(self, src: list, dst: list, what: str) -> bool:
        if not src:
            self._say(f"no paint correction to {what}")
            return False
        if not self._editable():
            return False
        f, oid, prompt = src[-1]
        if oid not in self.session.obj_ids:
            src.pop()
            self._say(f"object {oid} was removed: nothing to {what}")
            return False
        current = self.session.prompt_at(f, oid)
        self.goto(f)
        if not self._run(lambda: _set_prompt(self.session, f, oid, prompt)):
            return False
        src.pop()
        dst.append((f, oid, current))
        self._say(f"{what}: frame {f}, object {oid}")
        return True

    def clear_frame(self) -> None:
        if not self._editable() or self.active is None or self.active not in self.session.obj_ids:
            return
        self._run(lambda: self.session.clear_prompts(self.frame, self.active))

    def _run(self, fn) -> bool:
        try:
            fn()
        except SamtrackError as e:
            self._say(f"error: {e}")
            return False
        self.refresh()
        return True

    def _on_mouse(self, viewer, event):
        if event.button != 1 or self.frames is None:
            return
        mods = _modifiers(event)
        if self.session is None or self.busy:
            if "Shift" not in mods:
                self._editable()  # says why a click does nothing now
            return
        if viewer.layers.selection.active is self.labels_layer and self.labels_layer.mode != "pan_zoom":
            return  # painting: handled by the labels layer, then _on_paint
        start = np.asarray(event.position, float)[-2:]
        boxing = "Shift" in mods
        pan = viewer.camera.mouse_pan
        if boxing:
            viewer.camera.mouse_pan = False
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            if boxing:
                y1, x1 = np.asarray(event.position, float)[-2:]
                self.box_layer.data = [np.array([[start[0], start[1]], [start[0], x1], [y1, x1], [y1, start[1]]])]
            yield
        viewer.camera.mouse_pan = pan
        y, x = np.asarray(event.position, float)[-2:]
        negative = bool(mods & {"Control", "Alt", "Meta"})
        if boxing and dragged and self.exemplar_mode:  # an exemplar for the next Find, not a prompt
            self.add_exemplar(start[1], start[0], x, y, positive=not negative)
        elif boxing and dragged:
            self.box(start[1], start[0], x, y)
        elif not dragged:
            h, w = self.frames.info.height, self.frames.info.width
            if 0 <= x < w and 0 <= y < h:
                self.click(x, y, positive=False if negative else None)

    def _on_paint(self, event=None) -> None:
        # napari announces a stroke before writing it into the data: read it once the stroke is in
        from qtpy.QtCore import QTimer

        if not self._updating_labels and self.session is not None:
            QTimer.singleShot(0, self._apply_paint)

    def _apply_paint(self) -> None:
        if self.labels_layer is None or self.session is None:
            return
        if self.busy:
            self._say("a propagation is running: the paint stroke is not applied (cancel first)")
            self.refresh_frame()
            return
        oid = self.labels_layer.selected_label
        if oid not in self.results.object_ids:
            self._say(f"label {oid} is not an object: pick an object in the list before painting")
            self.refresh_frame()
            return
        self.active = oid
        self.paint_mask(np.asarray(self.labels_layer.data) == oid)
