"""``samtrack view``: the napari viewer with the samtrack widget. Only parses arguments; napari is
imported when the command runs, so the rest of the CLI starts without it."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from samtrack.cli_common import CH, CKPT, DEV, MODEL, RD, SIZE, ST, TA, Z, console, escape, reader_options
from samtrack.cli_words import cli_words
from samtrack.errors import InvalidOptionError


def view(source: Optional[Path] = typer.Argument(None, help="video file, image folder, TIFF stack or zarr"),
         result: Optional[Path] = typer.Option(None, "--result", help="a `samtrack track` output folder to show"),
         workdir: Optional[Path] = typer.Option(None, "--workdir", help="session folder (reopen it to continue)"),
         model: str = MODEL, checkpoint: Optional[str] = CKPT, image_size: Optional[int] = SIZE, device: str = DEV,
         frame: Optional[int] = typer.Option(None, "--frame", help="frame to show first"),
         screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="save a PNG of the viewer and exit"),
         z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA,
         reader: Optional[str] = RD, stream: Optional[int] = ST,
         server: Optional[str] = typer.Option(None, "--server", help="a `samtrack serve` URL: SOURCE is a path on "
                                              "the server, which computes (see docs/remote.md)"),
         token_file: Optional[Path] = typer.Option(None, "--token-file", help="the server's token file (with --server)"),
         upload: bool = typer.Option(False, "--upload", help="send the local SOURCE to the server first")) -> None:
    """Open the napari viewer with the samtrack widget (prompt, propagate, correct, export).

    Without model weights the video (and --result) opens read-only; the window says how to enable prompting.
    With --server the session lives on a `samtrack serve` server and this machine only shows and prompts."""
    import os

    opts = reader_options(z, channel, time_axis, reader, stream)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise InvalidOptionError("the viewer needs a display; on a headless machine run it under Xvfb: "
                                 "xvfb-run -a samtrack view ...")
    try:
        import napari
    except ImportError as e:
        raise InvalidOptionError(f"napari is not installed ({e}): pip install 'samtrack[viewer]'") from e
    if server is not None:
        if source is None or result is not None or screenshot is not None:
            raise InvalidOptionError("--server needs SOURCE (a path on the server) and takes no --result/--screenshot")
        from samtrack.viewer import view as open_view

        _, widget = open_view(os.fspath(source), server=server, token_file=token_file, upload=upload, model=model,
                              checkpoint=checkpoint, image_size=image_size, frame=frame,
                              workdir=os.fspath(workdir) if workdir else None, **opts)
        napari.run()
        widget.close_session()
        return
    if screenshot is not None:
        if source is None:
            raise InvalidOptionError("--screenshot needs a SOURCE")
        from samtrack.viewer import screenshot as shot

        png = shot(source, screenshot, frame=frame or 0, result=result, workdir=workdir, model=model,
                   checkpoint=checkpoint, image_size=image_size, device=device, **opts)
        console.print(f"screenshot saved to {png}")
        return
    from samtrack.viewer import view as open_view

    _, widget = open_view(source, result=result, workdir=workdir, model=model, checkpoint=checkpoint,
                          image_size=image_size, device=device, frame=frame, **opts)
    if widget.session is None and source is not None:
        console.print(f"[yellow]read-only: {escape(cli_words(widget.read_only or ''))}[/yellow]", highlight=False)
    napari.run()
    widget.close_session()  # the window is closed: stop a running propagation, write what is queued
