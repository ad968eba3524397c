"""napari viewer for samtrack: prompt keyframes, watch propagation, correct, re-propagate, export.

The only samtrack package that imports napari and Qt (lazily, inside the functions below and in
``_widget``). Entry points: :func:`view`, ``samtrack view`` and the napari plugin
(``napari.yaml``: Plugins > samtrack tracking).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)


class Opened(NamedTuple):
    """What :func:`open_for_viewing` opened. ``session``: None when read-only; ``read_only``: why (a
    sentence for the window and the terminal), None with a session."""

    session: object
    results: object
    frames: object
    read_only: str | None


def open_for_viewing(source, *, result=None, workdir=None, model: str | None = None, checkpoint=None,
                     image_size=None, device: str = "auto", config=None, download: bool = True,
                     **video_options) -> Opened:
    """:class:`Opened` (session or None, result store, frame store, why read-only) for ``source``.

    With ``result`` (a `samtrack track` output folder, which is a session workdir) the session
    is reopened there. Without model weights, or while another session (a ``samtrack track``
    still running, another viewer) has the folder open, the video and any results open
    read-only: browse, view the results written so far, export; ``read_only`` says why and what
    to do. Other errors (a video that cannot be read) are raised.
    """
    import samtrack
    from samtrack.errors import CheckpointError, SessionInUseError

    wd = result if result is not None else workdir
    model, image_size, video_options = _as_job_ran(result, model, image_size, video_options)
    try:
        s = samtrack.open_session(source, model=model, checkpoint=checkpoint, image_size=image_size, device=device,
                                  workdir=wd, config=config, download=download and result is None, **video_options)
        return Opened(s, s.results, s.frames, None)
    except CheckpointError as e:
        from samtrack.session.models import default_model

        name = model or default_model()
        why = f"no usable {name} weights: {e}"
        if "models download" not in why:  # the error says how to get them, or it is added once here
            why += (f". To prompt and track, run `samtrack models download {name}`, or pass --checkpoint PATH "
                    "(--checkpoint untrained for a pipeline check)")
    except SessionInUseError as e:
        why = f"{e} (the results written so far are shown; reopen to see newer ones)"
    log.info("read-only: %s", why)  # returned to the caller, who shows it
    if result is not None and (Path(result) / "results.zarr").exists():
        from samtrack.job import open_results

        store, _ = open_results(result)
        frames = samtrack.open_video(source, workdir=result, **video_options)
        return Opened(None, store, frames, why)
    # browse only: the video (through the session folder's frame cache) and whatever results it holds
    from samtrack.io.result_store import ResultStore
    from samtrack.session import default_workdir, get_model

    wd = wd if wd is not None else default_workdir(source, get_model(model), image_size)
    frames = samtrack.open_video(source, workdir=wd, **video_options)
    i = frames.info
    return Opened(None, ResultStore(Path(wd) / "results.zarr", n_frames=i.n_frames, height=i.height, width=i.width),
                  frames, why)


def _as_job_ran(result, model, image_size, video_options: dict):
    """(model, image_size, video_options) to continue the job in ``result`` as it was run: its model,
    size and reader options unless the caller gives others. Without ``result``: unchanged."""
    if result is None:
        return model, image_size, video_options
    from samtrack.job import read_job

    job = read_job(result) or {}
    model = job.get("model", model) if model is None else model
    image_size = image_size if image_size is not None else job.get("image_size")
    return model, image_size, {**job.get("video_options", {}), **video_options}


def view(source=None, *, result=None, workdir=None, model: str | None = None, checkpoint=None,
         image_size=None, device: str = "auto", viewer=None, frame: int | None = None, config=None,
         download: bool = True, session=None, server: str | None = None, token: str | None = None,
         token_file=None, upload: bool = False, **video_options):
    """Open ``source`` in napari with the samtrack widget docked; returns ``(viewer, widget)``.

    ``viewer``: an existing napari Viewer (default: a new one). ``workdir``: the session folder
    (default under ~/.cache/samtrack); opening the same one again restores objects, prompts and
    results. ``result``: a `samtrack track` output folder to show (and continue, when the model
    weights are there). ``frame``: the frame to show first. ``session``: a session already open
    (:func:`samtrack.open_session`, any model or backend, or a remote one) to show instead of ``source``.
    ``server``: a ``samtrack serve`` URL: ``source`` is then a path on the server (under its roots; with
    ``upload`` a local file sent there first) and the session lives there (``token`` or ``token_file``:
    the server's token); prompting, propagation, correction and export work as with a local session.
    """
    import napari

    from samtrack.viewer._widget import SamtrackWidget

    if viewer is None:
        viewer = napari.Viewer(title="samtrack")
    client = None
    if server is not None and session is None:
        if source is None:
            raise ValueError("view(server=...) needs the video's path on the server as source")
        from samtrack.viewer._remote import open_remote

        client, session = open_remote(server, source, token=token, token_file=token_file, model=model,
                                      checkpoint=checkpoint, image_size=image_size, workdir=workdir, upload=upload,
                                      **video_options)
    if session is not None:
        widget = SamtrackWidget(viewer, session)
        if client is not None:
            widget._client, widget._remote_video = client, session.state()["video"]
            widget.server_edit.setText(client.url)
            widget._open_options = {"image_size": image_size, **video_options}
        source = session.frames.source
    elif source is None:
        widget = SamtrackWidget(viewer)
    else:
        session, results, frames, why = open_for_viewing(
            source, result=result, workdir=workdir, model=model, checkpoint=checkpoint, image_size=image_size,
            device=device, config=config, download=download, **video_options)
        widget = SamtrackWidget(viewer, session, results=results, frames=frames)
        widget.read_only = why
        _, size, options = _as_job_ran(result, model, image_size, video_options)
        if session is None:  # choosing the model later opens this folder (the job), not the model's default one
            widget._keep_read_only_folder(result=result, workdir=workdir, model=model, checkpoint=checkpoint)
        widget._open_options = {"image_size": size, "device": device, "config": config, **options}
    if isinstance(source, (str, os.PathLike)):
        viewer.title = f"samtrack: {Path(os.fspath(source)).name}"
    elif source is not None:
        viewer.title = "samtrack: array"
    viewer.window.add_dock_widget(widget, name="samtrack", area="right")
    if frame is not None:
        widget.goto(frame)
    return viewer, widget


def screenshot(source, path, *, frame: int = 0, result=None, size=(1400, 860), canvas_only: bool = False,
               **kw) -> Path:
    """Render ``source`` (with ``result`` overlaid) at ``frame`` and save a PNG; needs a display
    (on a headless machine run under Xvfb, e.g. ``xvfb-run samtrack view ... --screenshot``)."""
    import napari

    viewer = napari.Viewer(title="samtrack", show=True)
    try:
        _, widget = view(source, result=result, viewer=viewer, frame=frame, **kw)
        viewer.window.resize(*size)
        _settle(0.3)  # the dock and the canvas take their final sizes before the frame is fitted
        viewer.reset_view()
        _settle(0.2)
        path = Path(path)
        viewer.screenshot(str(path), canvas_only=canvas_only, flash=False)
        widget.close_session()
        return path
    finally:
        viewer.close()


def _settle(seconds: float) -> None:
    import time

    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


__all__ = ["Opened", "open_for_viewing", "screenshot", "view"]
