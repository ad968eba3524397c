"""The widget's model picker: every registered model (``samtrack.session.models.model_table``), what
is on this machine, the default; choosing one reopens the shown video with it.

A mixin of :class:`samtrack.viewer._widget.SamtrackWidget`. Switching models keeps both jobs: each
model has its own session folder (the default one per source, model and image size, or the folder
the video was first opened with), so picking the first model again reopens its objects and masks.
"""
from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt

from samtrack.errors import SamtrackError

PICKER_TIP = ("Model. With a video open, choosing a downloaded model reopens the video with it (each model keeps "
              "its own session folder: choosing the previous model again brings its objects back); without a "
              "video, it is the model Open uses. Models marked 'not downloaded' say how to get them.")


def _label(row, in_use: bool, have_file: bool) -> str:
    """"sam3 (not downloaded)", "sam2.1_hiera_tiny (default, open)". A model opened here from a checkpoint
    file given by path (--checkpoint) is never marked absent."""
    marks = (["default"] if row.default else []) + (["open"] if in_use else []) + (
        [] if row.present or have_file else ["not downloaded"])
    return row.spec.name + (f" ({', '.join(marks)})" if marks else "")


def _tip(row) -> str:
    s = row.spec
    where = f"checkpoint: {row.path}" if row.present else f"not on this machine: samtrack models download {s.name}"
    gated = " (gated: accept its licence on the model page first)" if s.gated and not row.present else ""
    return f"{s.family} {s.size}, {s.params_m:g}M parameters, {s.image_size} px; {where}{gated}"


class ModelPicker:
    """Fills ``model_box`` (item data: the model name) and reacts to a user's choice."""

    _next_model: str | None = None  # chosen without a video: what Open uses
    _open_options: dict  # how the shown video was opened (image_size, device, config, reader options)
    _model_folders: dict  # model name -> {"checkpoint": ..., "workdir": ...} of the sessions opened here

    def fill_models(self) -> None:
        """(Re)list every registered model; called when the list opens, so a download made meanwhile shows."""
        from samtrack.session.models import model_table

        box = self.model_box
        in_use = self.session.backend.spec.name if self.session is not None else None
        box.blockSignals(True)
        box.clear()
        for i, row in enumerate(model_table()):
            box.addItem(_label(row, row.spec.name == in_use, self._checkpoint_file(row.spec.name) is not None),
                        row.spec.name)
            box.setItemData(i, _tip(row), Qt.ItemDataRole.ToolTipRole)
        box.blockSignals(False)
        self._select_model(self.current_model)

    @property
    def current_model(self) -> str | None:
        """The open session's model; else the one chosen for the next Open; else the default model."""
        if self.session is not None:
            return self.session.backend.spec.name
        if self._next_model is not None:
            return self._next_model
        from samtrack.session.models import default_model

        try:
            return default_model()
        except SamtrackError:
            return None

    def _keep_read_only_folder(self, *, result=None, workdir=None, model: str | None = None, checkpoint=None) -> None:
        """A session folder (``result``, a job's, or ``workdir``) shown read-only (in use elsewhere, or no
        weights): choosing its model (the job's, else ``model``, else the default) in the list later opens that
        folder with ``checkpoint``, as a model opened here before does, instead of the model's default folder."""
        from samtrack.session.models import default_model, get_model
        from samtrack.viewer import _as_job_ran

        folder = result if result is not None else workdir
        if folder is None:
            return
        model = _as_job_ran(result, model, None, {})[0]
        try:
            name = get_model(model).name if model is not None else default_model()
        except SamtrackError:
            return
        self._model_folders.setdefault(name, {"checkpoint": checkpoint, "workdir": Path(folder)})

    def _checkpoint_file(self, name: str):
        """The checkpoint file a session of model ``name`` was opened from in this widget (None: none by path)."""
        return self._model_folders.get(name, {}).get("checkpoint")

    def _select_model(self, name: str | None) -> None:
        box = self.model_box
        box.blockSignals(True)
        box.setCurrentIndex(box.findData(name) if name is not None else -1)  # -1: a model not in the registry
        box.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        self.choose_model(self.model_box.itemData(index))

    def choose_model(self, name: str) -> bool:
        """What picking ``name`` in the list does: an absent model says how to get it; without a video it
        becomes the model Open uses; with a video, the video is reopened with it. True when it took."""
        from samtrack.session.models import get_model, model_table

        if self.session is not None and name == self.current_model:
            return True
        if self.remote:  # the server's models and checkpoints, not this machine's
            if self.busy:
                self._say("a propagation is running: wait for it or cancel it (Escape) before switching models")
                self._select_model(self.current_model)
                return False
            if self.frames is None:
                self._next_model = name
                return True
            return self._reopen_remote(name)
        row = next((r for r in model_table() if r.spec.name == name), None)
        if row is None or not (row.present or self._checkpoint_file(name) is not None):
            spec = get_model(name)
            gated = (f" (gated: accept its licence at {spec.model_page} while logged in and set HF_TOKEN first)"
                     if spec.gated else "")
            self._say(f"{name} is not downloaded: run `samtrack models download {name}`{gated}, then choose it again")
            self._select_model(self.current_model)
            self.fill_models()  # the marks may have changed since the list was filled
            return False
        if self.frames is None:
            self._next_model = name
            self._say(f"{name}: used when you open a video")
            return True
        if self.busy:
            self._say("a propagation is running: wait for it or cancel it (Escape) before switching models")
            self._select_model(self.current_model)
            return False
        return self._reopen_with(name)

    def _detach(self) -> None:
        """Undo :meth:`_attach` (the layers, the callbacks, the object list) before showing another session."""
        v = self.viewer
        v.dims.events.current_step.disconnect(self._on_step)
        if self._on_mouse in v.mouse_drag_callbacks:
            v.mouse_drag_callbacks.remove(self._on_mouse)
        for layer in (self.image_layer, self.labels_layer, self.points_layer, self.box_layer, self.exemplar_layer):
            if layer is not None and layer in v.layers:
                v.layers.remove(layer)
        self.image_layer = self.labels_layer = self.points_layer = self.box_layer = self.exemplar_layer = None
        self.objects.blockSignals(True)
        self.objects.clear()
        self.objects.blockSignals(False)
        self.active = None
        self._paint_undo.clear()
        self._paint_redo.clear()
        self.exemplars.clear()

    def _reopen_with(self, name: str) -> bool:
        """Open the shown video with model ``name`` (its own session folder), then close the current one."""
        from samtrack.viewer import open_for_viewing

        prev, frame = self.current_model, self.frame
        where = self._model_folders.get(name, {})  # a model opened here before: its file and folder
        self._say(f"opening the video with {name}...")
        try:
            opened = open_for_viewing(self.frames.source, model=name, checkpoint=where.get("checkpoint"),
                                      workdir=where.get("workdir"), download=False, **self._open_options)
        except SamtrackError as e:
            self._say(f"error: {e}")
            self._select_model(self.current_model)
            return False
        old = self.session
        self.close_session()
        self._detach()
        self.session, self.results, self.frames, self.read_only = opened
        self._attach()
        self.goto(frame)
        if self.session is None:
            self._say(f"{name}: the video is shown read-only: {self.read_only}")
            return False
        back = f"; {prev}'s session is kept in {old.workdir} (choose {prev} to go back)" if old is not None else ""
        self._say(f"reopened with {name} in {self.session.workdir}{back}")
        return True
