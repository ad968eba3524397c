"""The ``samtrack`` command. It only parses arguments and calls the library."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from samtrack.errors import InvalidOptionError, SamtrackError

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


@app.command()
def track(source: Path = typer.Argument(..., help="video file, image folder, TIFF stack or zarr"),
          prompts: Path = typer.Option(..., "--prompts", "-p", help="prompt file (JSON/YAML)"),
          out_dir: Path = typer.Option(..., "--out", "-o", help="job directory (results, resumable)"),
          model: str = typer.Option("sam2.1_hiera_tiny", "--model"),
          checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="path, or 'untrained'"),
          image_size: Optional[int] = typer.Option(None, "--image-size"),
          device: str = typer.Option("auto", "--device"),
          direction: str = typer.Option("both", "--direction", help="forward, backward or both"),
          export_formats: Optional[List[str]] = typer.Option(None, "--export", help="format to export after tracking (repeat)"),
          force: bool = typer.Option(False, "--force", help="replace another job's directory / existing exports"),
          config: Optional[Path] = typer.Option(None, "--config", help="YAML preset (see configs/)"),
          z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA) -> None:
    """Track the prompted objects through the video; run it again to resume after an interruption."""
    from samtrack.job import run_track
    from samtrack.progress import progress_bar

    session_config = None
    opts: dict = {}
    if config is not None:
        from samtrack.config import load_config

        session_config, opts = load_config(config)
    opts.update(_reader_options(z, channel, time_axis, None))
    with progress_bar("tracking", unit="frames", show_memory=True) as update:
        session = run_track(source, prompts, out_dir, model=model, checkpoint=checkpoint, image_size=image_size,
                            device=device, direction=direction, force=force, progress=update, video_options=opts,
                            config=session_config)
    try:
        console.print(f"results in {out_dir} ({len(session.obj_ids)} objects, {session.n_frames} frames)")
        for fmt in export_formats or []:
            _export(session.results, fmt, out_dir / _default_name(fmt), force=force, frames=session.frames)
    finally:
        session.close()


def _default_name(fmt: str) -> str:
    return {"zarr": "labels.zarr", "tiff": "labels.tif", "png": "png", "npy": "labels.npy", "mp4": "overlay.mp4",
            "coco": "coco.json", "ytvis": "ytvis.json", "ctc": "ctc"}.get(fmt, fmt)


def _export(store, fmt, output, *, force, frames=None, allow_incomplete=False):
    from samtrack.io.export import export as do_export
    from samtrack.progress import progress_bar

    with progress_bar(f"export {fmt}", unit="frames") as update:
        path = do_export(store, fmt, output, force=force, allow_incomplete=allow_incomplete, frames=frames, progress=update)
    console.print(f"wrote {path}")


@app.command()
def export(job_dir: Path = typer.Argument(..., help="a `samtrack track` output directory"),
           fmt: str = typer.Option(..., "--format", "-f", help="zarr, tiff, png, npy, mp4"),
           output: Optional[Path] = typer.Option(None, "--output", "-o"),
           force: bool = typer.Option(False, "--force"),
           allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="export frames not computed or stale as empty")) -> None:
    """Export a job's results to a format other tools open."""
    import samtrack
    from samtrack.job import open_results

    store, job = open_results(job_dir)
    frames = None
    if fmt == "mp4":
        frames = samtrack.open_video(job["source"], workdir=job_dir, **job.get("video_options", {}))
    try:
        _export(store, fmt, output or (job_dir / _default_name(fmt)), force=force, frames=frames,
                allow_incomplete=allow_incomplete)
    finally:
        if frames is not None:
            frames.close()


@app.command("eval")
def evaluate(pred: Path = typer.Argument(..., help="prediction: job dir, label zarr, PNG folder or CTC RES folder"),
             gt: Path = typer.Argument(..., help="ground truth: PNG folder (DAVIS) or CTC GT folder"),
             as_json: bool = typer.Option(False, "--json"),
             skip_first_last: bool = typer.Option(False, "--skip-first-last", help="DAVIS challenge protocol")) -> None:
    """J&F (DAVIS) per object and mean; SEG/TRA for Cell Tracking Challenge folders."""
    from samtrack import evaluate as ev
    from samtrack.progress import progress_bar

    if ev.is_ctc(pred, gt):
        res = ev.ctc_metrics(pred, gt)
    else:
        with progress_bar("evaluating", unit="frames") as update:
            res = ev.davis_jf(pred, gt, skip_first_last=skip_first_last, progress=update)
    if as_json:
        out.print_json(json.dumps(res))
        return
    if "JF" in res:
        for oid, v in res["objects"].items():
            out.print(f"object {oid:>4}: J {v['J']:.4f}  F {v['F']:.4f}  J&F {v['JF']:.4f}")
        out.print(f"mean       : J {res['J']:.4f}  F {res['F']:.4f}  J&F {res['JF']:.4f}  ({res['frames']} frames)")
    else:
        out.print("  ".join(f"{k} {v}" for k, v in res.items()))


@app.command()
def view(source: Optional[Path] = typer.Argument(None, help="video file, image folder, TIFF stack or zarr"),
         result: Optional[Path] = typer.Option(None, "--result", help="a `samtrack track` output directory to show"),
         workdir: Optional[Path] = typer.Option(None, "--workdir", help="session folder (reopen it to continue)"),
         model: str = typer.Option("sam2.1_hiera_tiny", "--model"),
         checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="path, or 'untrained'"),
         image_size: Optional[int] = typer.Option(None, "--image-size"),
         device: str = typer.Option("auto", "--device"),
         frame: Optional[int] = typer.Option(None, "--frame", help="frame to show first"),
         screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="save a PNG of the viewer and exit"),
         z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA) -> None:
    """Open the napari viewer with the samtrack widget (prompt, propagate, correct, export)."""
    import os

    opts = _reader_options(z, channel, time_axis, None)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise InvalidOptionError("the viewer needs a display; on a headless machine run it under Xvfb: "
                                 "xvfb-run -a samtrack view ...")
    try:
        import napari
    except ImportError as e:
        raise InvalidOptionError(f"napari is not installed ({e}): pip install 'samtrack[viewer]'") from e
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
    napari.run()
    if widget.session is not None:  # the window is closed: write what is still queued
        widget.session.close()


models_app = typer.Typer(help="Supported models and their checkpoints.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List models: family, size, parameters, checkpoint, where samtrack looks, present or not."""
    if ctx.invoked_subcommand is not None:
        return
    from samtrack.session.checkpoints import checkpoint_dirs, find_checkpoint
    from samtrack.session.models import MODELS

    rows = []
    for m in MODELS.values():
        found = find_checkpoint(m)
        rows.append({"name": m.name, "family": m.family, "size": m.size, "params_m": m.params_m,
                     "checkpoint": m.checkpoint, "url": m.url, "hf_id": m.hf_id, "present": found is not None,
                     "path": str(found) if found else None, "approx_memory_gb": m.approx_memory_gb,
                     "search": [str(d) for d in checkpoint_dirs()]})
    if as_json:
        out.print_json(json.dumps(rows))
        return
    from rich.table import Table

    t = Table("model", "family", "size", "params (M)", "checkpoint", "present", "~memory (GB)")
    for r in rows:
        t.add_row(r["name"], r["family"], r["size"], f"{r['params_m']:.1f}", r["checkpoint"],
                  "[green]yes[/green]" if r["present"] else "no", f"{r['approx_memory_gb']:.1f}")
    out.print(t)
    out.print(f"searched: {', '.join(rows[0]['search'])}")


@models_app.command("download")
def models_download(name: str) -> None:
    """Download a model's official checkpoint (resumable, verified when a sha256 is known)."""
    from samtrack.progress import progress_bar
    from samtrack.session.checkpoints import download_checkpoint
    from samtrack.session.models import get_model

    with progress_bar(f"download {name}", unit="bytes") as update:
        path = download_checkpoint(get_model(name), progress=update)
    console.print(f"saved {path}")


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
