"""The ``samtrack`` command. It only parses arguments and calls the library."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from samtrack.errors import SamtrackError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Track and segment objects through long videos with SAM2.")
console = Console(stderr=True)
out = Console()


def _reader_options(z: Optional[int], channels: Optional[List[int]], time_axis: Optional[str], reader: Optional[str]) -> dict:
    opts: dict = {}
    if z is not None:
        opts["z"] = z
    if channels:
        opts["channels"] = list(channels)
    if time_axis:
        opts["time_axis"] = time_axis
    if reader:
        opts["reader"] = reader
    return opts


Z = typer.Option(None, "--z", help="Z plane of a hyperstack")
CH = typer.Option(None, "--channel", "-c", help="channel index (repeat for up to 3)")
TA = typer.Option(None, "--time-axis", help="which axis is time when the stack has none named T")
RD = typer.Option(None, "--reader", help="force a reader: pyav, decord, images, tiff, zarr")


@app.command()
def info(source: Path = typer.Argument(..., help="video file, image folder, TIFF stack or zarr"),
         as_json: bool = typer.Option(False, "--json", help="print JSON"),
         z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA,
         reader: Optional[str] = RD) -> None:
    """Describe a source (frames, size, fps, dtype, channels, rotation) without decoding it."""
    from samtrack.io.registry import open_reader

    opts = _reader_options(z, channel, time_axis, reader)
    rd_name = opts.pop("reader", None)
    with open_reader(source, reader=rd_name, **opts) as rd:
        d = rd.info.to_dict()
    if as_json:
        out.print_json(json.dumps(d))
        return
    for k in ("n_frames", "height", "width", "fps", "dtype", "channels", "rotation", "reader"):
        out.print(f"{k:>9}: {d[k]}")
    for note in d["notes"]:
        out.print(f"[yellow]     note: {note}[/yellow]")


@app.command()
def cache(source: Path = typer.Argument(..., help="video file, image folder, TIFF stack or zarr"),
          workdir: Optional[Path] = typer.Option(None, "--workdir", help="where the cache lives"),
          z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA,
          reader: Optional[str] = RD) -> None:
    """Decode a source once into the zarr frame cache (resumes an interrupted build)."""
    import samtrack
    from samtrack.progress import progress_bar

    opts = _reader_options(z, channel, time_axis, reader)
    with samtrack.open_video(source, workdir=workdir, **opts) as fs:
        with progress_bar("caching frames", total=len(fs), unit="frames") as update:
            fs.build(progress=update)
        console.print(f"cached {len(fs)} frames of {fs.info.width}x{fs.info.height} in {fs.path}")


def main(argv: Optional[list] = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=False)
    except SamtrackError as e:
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished work is saved; run the same command again to resume[/yellow]")
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
