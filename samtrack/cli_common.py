"""What the ``samtrack`` commands share: the consoles, the options several commands take (reader,
model, checkpoint, image size, device), and printing an export's report. Only parses and prints."""
from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from samtrack.cli_words import cli_words

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 250)  # piped output: tables are not cut to 80 columns

DEVICES = "auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"


def model_help() -> str:
    """The ``--model`` help text: the registry's model names and how the default is chosen."""
    from samtrack.session.models import MODELS

    return ("model name: " + ", ".join(MODELS) + " (see `samtrack models`); default: the model a --checkpoint file "
            "is, else the one set with `samtrack models default`")


def formats() -> str:
    """The export formats, comma-separated (for help texts and errors)."""
    from samtrack.io.export import FORMATS

    return ", ".join(FORMATS)


# -- options shared by commands -------------------------------------------------------------
Z = typer.Option(None, "--z", help="Z plane of a hyperstack (0-based; `samtrack info` lists them)")
CH = typer.Option(None, "--channel", "-c", help="channel index of a multi-channel stack (repeat for up to 3)")
TA = typer.Option(None, "--time-axis", help="which stack axis is time when none is named T (e.g. Z)")
RD = typer.Option(None, "--reader", help="force a reader: pyav, decord, images, tiff, zarr")
ST = typer.Option(None, "--stream", help="video stream of a file with several (0-based; `samtrack info` lists them)")
MODEL = typer.Option(None, "--model", help=model_help())
CKPT = typer.Option(None, "--checkpoint", help="checkpoint file (default: found in the checkpoint folders or "
                                                "downloaded), or 'untrained' for random weights (pipeline checks)")
SIZE = typer.Option(None, "--image-size", help="model input size in pixels, a multiple of 16 (default the "
                                               "model's 1024; 512 is about 4x faster)")
DEV = typer.Option("auto", "--device", help=f"compute device: {DEVICES}")


def reader_options(z=None, channels=None, time_axis=None, reader=None, stream=None) -> dict:
    """The reader options given on the command line, as :func:`samtrack.open_video` keywords (None left out)."""
    opts: dict = {}
    for k, v in (("z", z), ("time_axis", time_axis), ("reader", reader), ("stream", stream)):
        if v is not None:
            opts[k] = v
    if channels:
        opts["channels"] = list(channels)
    return opts


def default_name(fmt: str) -> str:
    """The file or folder name an export to ``fmt`` gets in a job folder (``samtrack.io.export``'s)."""
    from samtrack.io.export import default_name as name_in_job

    return name_in_job(fmt)


def export_with_report(store, fmt, output, *, force, frames=None, allow_incomplete=False, **options):
    """Export result ``store`` to ``fmt`` at ``output`` with a progress bar, then print its report
    (:func:`samtrack.io.export.export`'s arguments and errors)."""
    from samtrack.io.export import export as do_export
    from samtrack.progress import progress_bar

    with progress_bar(f"export {fmt}", unit="frames") as update:
        report = do_export(store, fmt, output, force=force, allow_incomplete=allow_incomplete, frames=frames,
                           progress=update, **options)
    print_report(report)


def print_objects(session, first: int = 12) -> None:
    """One line on stderr: how many objects ``session`` (local or remote) tracks and the first names."""
    ids = session.obj_ids
    names = ", ".join(str(session.results.object_meta(o).get("name")) for o in ids[:first])
    console.print(f"{len(ids)} object(s): {names}" + (", ..." if len(ids) > first else ""), highlight=False)


def print_report(report) -> None:
    """An export report on stderr: its warnings in CLI words, then its one-line summary."""
    for w in report.warnings:  # also logged; the CLI's logging leaves samtrack.io.export to this
        console.print(f"[yellow]warning: {escape(cli_words(w))}[/yellow]", highlight=False)
    console.print(escape(report.summary()), highlight=False)
