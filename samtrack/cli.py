"""The ``samtrack`` command. It only parses arguments and calls the library.

Errors: a :class:`SamtrackError` prints one ``error:`` line in CLI words (``--force``,
not ``force=True``: :func:`cli_words`) and exits 2; a usage mistake prints click's short
usage message and exits 2; Ctrl-C exits 130 with finished work saved. Never a traceback
for a user's mistake.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from samtrack import __version__
from samtrack.cli_common import (CH, CKPT, DEV, MODEL, RD, SIZE, ST, TA, Z, console, default_name,
                                 export_with_report, formats, out, print_objects, reader_options)
from samtrack.cli_words import click_errors, cli_words
from samtrack.errors import InvalidOptionError, SamtrackError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Track and segment objects through long videos with SAM2 / SAM2.1.")
def _version(value: bool) -> None:
    if value:
        out.print(f"samtrack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True,
                                       callback=_version)) -> None:
    """Track and segment objects through long videos with SAM2 / SAM2.1."""


@app.command()
def info(source: Path = typer.Argument(..., help="video file, image folder, TIFF stack or zarr"),
         as_json: bool = typer.Option(False, "--json", help="print JSON"),
         z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA,
         reader: Optional[str] = RD, stream: Optional[int] = ST) -> None:
    """Describe a source (frames, size, fps, dtype, channels, rotation, streams) without decoding it.

    A stack that needs a choice (a Z plane, channels) is described with the options that open it."""
    from samtrack.io.describe import describe_source

    opts = reader_options(z, channel, time_axis, None, stream)
    d = describe_source(source, reader=reader, **opts)
    if as_json:
        out.print_json(json.dumps(d))
        return
    keys = ("n_frames", "height", "width", "fps", "dtype", "channels", "rotation", "reader") if d.get("opened") \
        else ("axes", "shape", "dtype", "reader")
    for k in keys:
        out.print(f"{k:>9}: {d.get(k)}", highlight=False)
    if d.get("sizes") and not d.get("opened"):
        out.print(f"{'sizes':>9}: " + ", ".join(f"{a}={n}" for a, n in d["sizes"].items()), highlight=False)
    for s in d.get("streams") or []:
        out.print(f"{'stream':>9}: " + ", ".join(f"{k} {v}" for k, v in s.items()), highlight=False)
    for note in d.get("notes") or []:
        out.print(f"[yellow]{'note':>9}: {escape(cli_words(note))}[/yellow]", highlight=False)
    if not d.get("opened"):
        out.print(f"[yellow]{'choose':>9}: {escape(cli_words(str(d.get('message'))))}[/yellow]", highlight=False)
        for c in d.get("choices") or []:
            rng = f"{c['range'][0]}..{c['range'][1]}" if c.get("range") else "/".join(map(str, c.get("values", [])))
            out.print(f"{'':>11}{c['option']} {rng}   ({c['why']})", highlight=False)


@app.command()
def cache(source: Path = typer.Argument(..., help="video file, image folder, TIFF stack or zarr"),
          workdir: Optional[Path] = typer.Option(None, "--workdir", help="where the cache lives (default under "
                                                                          "~/.cache/samtrack; a job's --out)"),
          features: bool = typer.Option(False, "--features", help="also run the image encoder on every frame and "
                                        "keep its features (a later session or track in this folder never encodes "
                                        "a frame again)"),
          model: str = MODEL, checkpoint: Optional[str] = CKPT, image_size: Optional[int] = SIZE, device: str = DEV,
          z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA,
          reader: Optional[str] = RD, stream: Optional[int] = ST) -> None:
    """Decode a source once into the zarr frame cache (resumes an interrupted build); with --features,
    precompute the model's image features too (on whatever device is free, ahead of a session)."""
    import samtrack
    from samtrack.progress import progress_bar

    opts = reader_options(z, channel, time_axis, reader, stream)
    if features:
        s = samtrack.open_session(source, model=model, checkpoint=checkpoint, image_size=image_size, device=device,
                                  workdir=workdir, **opts)
        try:
            with progress_bar("image features", total=s.n_frames, unit="frames") as update:
                n = s.precompute_features(progress=update)
            console.print(f"encoded {n} frame(s); {s.features.cached_frames} of {s.n_frames} frames' features in "
                          f"{s.features.path} (open a session or --out with this folder to use them)")
        finally:
            s.close()
        return
    from samtrack.io.folder_lock import FolderLock

    # a job folder a session writes is not rebuilt under it (other reader options recreate its frame cache)
    lock = FolderLock(workdir).acquire(purpose="samtrack cache") if workdir is not None else None
    try:
        with samtrack.open_video(source, workdir=workdir, **opts) as fs:
            with progress_bar("caching frames", total=len(fs), unit="frames") as update:
                fs.build(progress=update)
            console.print(f"cached {len(fs)} frames of {fs.info.width}x{fs.info.height} in {fs.path}")
    finally:
        if lock is not None:
            lock.release()


@app.command()
def track(source: Path = typer.Argument(..., help="video file, image folder, TIFF stack or zarr"),
          prompts: Optional[Path] = typer.Option(None, "--prompts", "-p", help="prompt file (JSON/YAML; see the "
                                                 "README); optional with --text"),
          out_dir: Path = typer.Option(..., "--out", "-o", help="job folder: results, resumable; run again to "
                                                               "resume or to apply an edited prompt file"),
          model: str = MODEL, checkpoint: Optional[str] = CKPT, image_size: Optional[int] = SIZE, device: str = DEV,
          direction: str = typer.Option("both", "--direction", help="forward, backward or both"),
          export_formats: Optional[List[str]] = typer.Option(None, "--export", help="export after tracking, "
                                                             "repeatable; one of: zarr, tiff, png, npy, mp4, coco, "
                                                             "ytvis, ctc"),
          allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="let --export write frames not "
                                                "computed or stale (as empty)"),
          write_frames: bool = typer.Option(False, "--write-frames", help="--export coco/ytvis of a video: also write "
                                            "the frames the JSON names (<stem>/<index>.jpg) beside it"),
          force: bool = typer.Option(False, "--force", help="recompute everything; replace another job's folder"),
          features: bool = typer.Option(False, "--features", help="encode every frame first (image features kept "
                                        "in the job folder; corrections later never re-encode)"),
          config: Optional[Path] = typer.Option(None, "--config", help="YAML preset (see configs/)"),
          text: Optional[List[str]] = typer.Option(None, "--text", help="find every instance of this text (\"cell\") "
                                                   "and track each as an object (SAM3 models); repeatable"),
          text_frame: int = typer.Option(0, "--text-frame", "--find-frame", help="the frame --text / --everything "
                                         "look at"),
          everything: bool = typer.Option(False, "--everything", help="segment every object on --text-frame and "
                                          "track each (SAM2 models: the automatic mask generator)"),
          threshold: Optional[float] = typer.Option(None, "--threshold", help="detection score an object needs, "
                                                    "0..1 (default 0.5 for --text, 0.8 predicted IoU for "
                                                    "--everything)"),
          redetect_every: Optional[int] = typer.Option(None, "--redetect-every", help="run --text/--everything (and "
                                                       "the prompt file's \"find\") again every N frames, adding "
                                                       "objects that appear later"),
          z: Optional[int] = Z, channel: Optional[List[int]] = CH, time_axis: Optional[str] = TA,
          reader: Optional[str] = RD, stream: Optional[int] = ST,
          server: Optional[str] = typer.Option(None, "--server", help="a `samtrack serve` URL: the server computes; "
                                               "SOURCE and --checkpoint are paths on it, --export downloads into "
                                               "--out (see docs/remote.md)"),
          token_file: Optional[Path] = typer.Option(None, "--token-file", help="the server's token file (with "
                                                    "--server)"),
          upload: bool = typer.Option(False, "--upload", help="with --server: send the local SOURCE first"),
          workdir: Optional[str] = typer.Option(None, "--workdir", help="with --server: the session folder on the "
                                                "server (default: the server's folder for this video, model and "
                                                "size); run again to resume")) -> None:
    """Track the prompted objects through the video into a job folder (objects from --prompts, or
    found by --text / --everything).

    With --server the job's session lives on a `samtrack serve` server: the prompt file is read here,
    the server tracks, the exports are downloaded into --out; the same command again resumes."""
    from samtrack.job import start_track
    from samtrack.progress import progress_bar

    if direction not in ("forward", "backward", "both"):
        raise InvalidOptionError(f"--direction {direction}: use forward, backward or both")
    from samtrack.io.export import FORMATS

    bad = [f for f in export_formats or [] if f not in FORMATS]
    if bad:
        raise InvalidOptionError(f"--export {bad[0]}: choose one of {formats()}")
    session_config, opts = None, {}
    if config is not None:
        from samtrack.config import load_config

        session_config, opts = load_config(config)
    opts.update(reader_options(z, channel, time_axis, reader, stream))
    finds = [{"frame": text_frame, "text": t, **({"threshold": threshold} if threshold is not None else {})}
             for t in text or []]
    if everything:
        finds.append({"frame": text_frame, "everything": True, **({"threshold": threshold} if threshold is not None else {})})
    if prompts is None and not finds:
        raise InvalidOptionError("nothing to track: give --prompts FILE, or --text WORD (SAM3) / --everything (SAM2)")
    if redetect_every is not None and redetect_every < 1:
        raise InvalidOptionError(f"--redetect-every {redetect_every}: give a number of frames, at least 1")
    if server is not None:
        if device != "auto":
            raise InvalidOptionError("--device is the server's with --server (samtrack serve --device)")
        if features:
            raise InvalidOptionError("--features is not available with --server: run `samtrack cache --features` "
                                     "on the server, with --workdir the session folder")
        from samtrack.cli_remote import track_remote

        track_remote(server, token_file, upload, source, prompts, out_dir, workdir, model=model,
                      checkpoint=checkpoint, image_size=image_size, direction=direction, force=force,
                      video_options=opts, config=session_config, finds=finds, redetect_every=redetect_every,
                      export_formats=export_formats or [], allow_incomplete=allow_incomplete,
                      write_frames=write_frames)
        return
    for flag, given in (("--token-file", token_file is not None), ("--upload", upload),
                        ("--workdir", workdir is not None)):
        if given:
            raise InvalidOptionError(f"{flag} goes with --server (a local job's folder is --out)")
    session, start = start_track(source, prompts, out_dir, model=model, checkpoint=checkpoint, image_size=image_size,
                                 device=device, direction=direction, force=force, video_options=opts,
                                 config=session_config, finds=finds)
    try:
        if start.resumed:
            msg = f"resuming {out_dir}: {start.frames_done} of {start.n_frames} frames done"
            if start.prompts_changed:
                msg += f", {start.prompts_changed} prompt change(s) from the prompt file applied"
            msg += (f"; computing {start.to_compute} frame(s): {start.frames_text}" if start.to_compute
                    else "; nothing left to compute")
            console.print(escape(msg), highlight=False)
        if features and session.features is not None:
            with progress_bar("image features", total=session.n_frames, unit="frames") as update:
                session.precompute_features(progress=update)
        if finds or getattr(session, "concepts", None):
            print_objects(session)
        if redetect_every and session.concepts:
            with progress_bar("tracking + re-detection", total=start.progress_total, unit="frames",
                              show_memory=True) as update:
                for _ in session.propagate_and_redetect(redetect_every, direction, progress=update):
                    pass
        elif start.to_compute:
            with progress_bar("tracking", total=start.progress_total, unit="frames", show_memory=True) as update:
                for _ in session.propagate(direction, progress=update):
                    pass
        elif not session.obj_ids:
            console.print("[yellow]nothing was found to track: lower --threshold, or prompt objects with "
                          "--prompts[/yellow]")
        console.print(f"results in {out_dir} ({len(session.obj_ids)} objects, {session.n_frames} frames)")
        for fmt in export_formats or []:  # the job's own exports: refreshed on every run
            extra = {"frames_dir": out_dir} if write_frames and fmt in ("coco", "ytvis") else {}
            export_with_report(session.results, fmt, out_dir / default_name(fmt), force=True, frames=session.frames,
                    allow_incomplete=allow_incomplete, **extra)
    finally:
        session.close()


@app.command()
def export(job_dir: Path = typer.Argument(..., help="a `samtrack track` output folder"),
           fmt: str = typer.Option(..., "--format", "-f", help="one of: zarr, tiff, png, npy, mp4, coco, ytvis, ctc"),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="where to write (default in the job "
                                                                             "folder: labels.tif, ctc/, ...)"),
           force: bool = typer.Option(False, "--force", help="replace an existing output"),
           allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="export frames not computed or "
                                                                                    "stale as empty"),
           write_frames: bool = typer.Option(False, "--write-frames", help="coco/ytvis of a video: also write the "
                                             "frames the JSON names (<stem>/<index>.jpg) beside it")) -> None:
    """Export a job's results to a format other tools open."""
    import samtrack
    from samtrack.io.export import FORMATS
    from samtrack.job import open_results

    if fmt not in FORMATS:
        raise InvalidOptionError(f"--format {fmt}: choose one of {formats()}")
    store, job = open_results(job_dir)
    frames = None
    if job and job.get("source"):
        try:
            frames = samtrack.open_video(job["source"], workdir=job_dir, **job.get("video_options", {}))
        except SamtrackError as e:
            if fmt == "mp4":
                raise
            logging.getLogger(__name__).warning("the video is not available (%s): no frame names or times", e)
    output = output or (job_dir / default_name(fmt))
    extra = {"frames_dir": output.parent} if write_frames and fmt in ("coco", "ytvis") else {}
    try:
        export_with_report(store, fmt, output, force=force, frames=frames, allow_incomplete=allow_incomplete, **extra)
    finally:
        if frames is not None:
            frames.close()


@app.command()
def batch(manifest: Path = typer.Argument(..., help="CSV or YAML manifest (video, prompts, name, model, image_size, "
                                          "direction, exports, text per row), or a folder of videos with prompt "
                                          "files of the same name"),
          out_dir: Path = typer.Option(..., "--out", "-o", help="batch folder: one job folder per video (DIR/<name>) "
                                                               "and batch-report.json/.csv; run again to resume"),
          executor: str = typer.Option("local", "--executor", help="local (worker processes here) or ray"),
          workers: Optional[int] = typer.Option(None, "--workers", help="worker processes (local; default one per "
                                                "device) or actors (ray --ray-mode actors)"),
          devices: Optional[str] = typer.Option(None, "--devices", help="local devices, comma-separated, shared by "
                                                "the workers in turn: cuda:0,cuda:1 (default auto)"),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (ray start --head "
                                                "prints it); default a local cluster for this run"),
          ray_mode: str = typer.Option("tasks", "--ray-mode", help="tasks (one per video) or actors (one per GPU, "
                                       "model kept loaded: many short videos)"),
          gpus_per_video: Optional[float] = typer.Option(None, "--gpus-per-video", help="Ray: GPUs per video or "
                                                         "actor (0.5 shares a GPU; default 1 if the cluster has GPUs)"),
          cpus_per_video: float = typer.Option(1.0, "--cpus-per-video", help="Ray: CPUs per video or actor"),
          retries: int = typer.Option(2, "--retries", help="times a video whose worker died is resumed elsewhere"),
          only: Optional[List[str]] = typer.Option(None, "--only", help="run only this row (its name); repeatable"),
          model: str = MODEL, checkpoint: Optional[str] = CKPT, image_size: Optional[int] = SIZE,
          direction: str = typer.Option("both", "--direction", help="default direction: forward, backward or both"),
          export_formats: Optional[List[str]] = typer.Option(None, "--export", help="default exports, repeatable"),
          text: Optional[List[str]] = typer.Option(None, "--text", help="default text prompt (SAM3); repeatable"),
          text_frame: int = typer.Option(0, "--text-frame", help="the frame --text looks at"),
          features: bool = typer.Option(False, "--features", help="encode every frame first and keep its image "
                                        "features in the job folder (corrections there later encode nothing)")) -> None:
    """Track every video of a manifest, one resumable job each, on worker processes or a Ray cluster.

    Rows take their own options or these defaults; the manifest is checked as a whole first. Exits 1
    naming the videos that failed; running it again skips finished videos and resumes the others."""
    from samtrack.batch import EXECUTORS, RowDefaults, load_manifest, run_batch
    from samtrack.batch.board import shown

    if executor not in EXECUTORS:
        raise InvalidOptionError(f"--executor {executor}: choose one of {', '.join(EXECUTORS)}")
    if executor != "local" and devices:
        raise InvalidOptionError("--devices is for --executor local; on Ray each video asks for --gpus-per-video")
    if executor != "ray" and address:
        raise InvalidOptionError("--address is for --executor ray")
    defaults = RowDefaults(model=model, checkpoint=checkpoint, image_size=image_size, direction=direction,
                           exports=tuple(export_formats or ()), text=tuple(text or ()), text_frame=text_frame,
                           features=features)
    opts: dict = {"retries": retries, "workers": workers}
    if executor == "ray":
        opts.update(address=address, mode=ray_mode, gpus_per_video=gpus_per_video, cpus_per_video=cpus_per_video)
    elif devices:
        opts["devices"] = devices.split(",")
    m = load_manifest(manifest, out_dir, defaults=defaults)
    if only:
        m = m.select(only)
    with shown(console, [(j.name, j.n_frames) for j in m.jobs]) as update:
        report = run_batch(m, out_dir, executor=executor, progress=update, **opts)
    console.print(report.summary_line(), highlight=False, soft_wrap=True)
    console.print(f"report: {out_dir / 'batch-report.json'} and .csv", highlight=False, soft_wrap=True)
    if report.failed:
        for v in report.failed:
            console.print(f"[red]failed:[/red] {escape(v.name)}: {escape(cli_words(v.error))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(1)


@app.command("eval")
def evaluate(pred: Path = typer.Argument(..., help="prediction: job folder, label zarr, PNG folder or CTC RES folder"),
             gt: Path = typer.Argument(..., help="ground truth: PNG folder (DAVIS) or CTC GT folder"),
             as_json: bool = typer.Option(False, "--json", help="print JSON"),
             skip_first_last: bool = typer.Option(False, "--skip-first-last", help="DAVIS challenge protocol"),
             allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="a job folder with frames not "
                                                   "computed or stale: evaluate them as empty")) -> None:
    """J&F (DAVIS) per object and mean; SEG/TRA for Cell Tracking Challenge ground truth (a job folder is
    exported to CTC first)."""
    from samtrack import evaluate as ev
    from samtrack.progress import progress_bar

    if ev.is_ctc(pred, gt):
        res = ev.ctc_metrics(pred, gt, allow_incomplete=allow_incomplete)
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
        flat = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
        out.print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in flat.items()),
                  highlight=False)
        for p in res.get("problems") or []:
            out.print(f"[yellow]problem: {p}[/yellow]", highlight=False)
        for w in (res.get("export") or {}).get("warnings") or []:
            out.print(f"[yellow]export: {w}[/yellow]", highlight=False)


app.command("view")(__import__("samtrack.cli_view", fromlist=["view"]).view)  # napari

from samtrack.cli_admin import caches_app, models_app  # noqa: E402  (sub-commands: models, caches)

app.add_typer(models_app, name="models")
app.add_typer(caches_app, name="caches")
app.command("serve")(__import__("samtrack.cli_serve", fromlist=["serve"]).serve)  # remote sessions


def main(argv: Optional[list] = None) -> None:
    """The ``samtrack`` entry point: runs the command in ``argv`` (default ``sys.argv``) and exits with its
    status: 0, 2 for a user's mistake (a one-line ``error:`` in CLI words, or click's usage message), 130
    after Ctrl-C, 143 after SIGTERM (128 + the signal's number, as a shell reports it; not for ``serve``
    and ``view``, which stop on SIGTERM as uvicorn and Qt do)."""
    import signal

    from samtrack.cli_signals import record_sigterm_only, stop_on_sigterm, stopped, terminated

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("samtrack.io.export").setLevel(logging.ERROR)  # export warnings: printed from the report
    usage, abort, exits = click_errors()
    args = list(sys.argv[1:] if argv is None else argv)
    previous = stop_on_sigterm(args)
    try:
        try:
            rc = app(args=argv, standalone_mode=False, prog_name="samtrack")
        finally:  # the command is over: a SIGTERM from here on is noted, never raised into the exit path
            if previous is not None:
                signal.signal(signal.SIGTERM, record_sigterm_only)
        if terminated or rc == 130:  # typer >= 0.20 returns Ctrl-C as exit code 130 (standalone_mode=False)
            stopped(args)
        sys.exit(rc if isinstance(rc, int) else 0)
    except SamtrackError as e:
        console.print("[bold red]error:[/bold red] " + escape(cli_words(str(e))), highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, *abort):  # click turns Ctrl-C (and so SIGTERM) into Abort
        stopped(args)
    except usage as e:
        e.show()
        sys.exit(e.exit_code)
    except exits as e:
        if terminated or isinstance(e.__cause__, KeyboardInterrupt):  # typer >= 0.20: Ctrl-C as Exit(130)
            stopped(args)
        sys.exit(getattr(e, "exit_code", 0))
    finally:  # main() called in a longer-lived process (tests, scripts): its SIGTERM handler as before
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
