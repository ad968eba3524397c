"""``samtrack track --server``: the job's session on a ``samtrack serve`` server (docs/remote.md); the
prompt file is read here, the server tracks, the exports are downloaded. Only parses and prints."""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from samtrack.cli_common import console, default_name, print_objects, print_report
from samtrack.errors import InvalidOptionError


def track_remote(server: str, token_file, upload: bool, source: Path, prompts, out_dir: Path, workdir, *, model,
                 checkpoint, image_size, direction, force, video_options, config, finds, redetect_every,
                 export_formats, allow_incomplete, write_frames) -> None:
    """``track --server``: the job's session on the server, exports downloaded into ``out_dir``."""
    import os

    import samtrack
    from samtrack.io.export import ranges
    from samtrack.job import check_job_prompts, run_job, start_remote_track
    from samtrack.progress import progress_bar

    check_job_prompts(prompts, finds)  # before the server is asked anything
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidOptionError(f"--out {out_dir} is a file: give a folder for the downloaded exports")
    with samtrack.connect(server, token_file=token_file) as client:
        video = os.fspath(source)
        if upload:
            with progress_bar(f"upload {source.name}", unit="bytes") as update:
                video = client.upload(source, progress=update)
        session, start = start_remote_track(client, video, prompts, workdir=workdir, model=model,
                                            checkpoint=checkpoint, image_size=image_size, force=force,
                                            video_options=video_options, config=config, finds=finds)
        try:
            where = f"{start.workdir} on {client.url}"
            if start.resumed:
                msg = f"resuming {where}: {start.frames_done} of {start.n_frames} frames done"
                if start.prompts_changed:
                    msg += f", {start.prompts_changed} prompt change(s) from the prompt file applied"
                console.print(escape(msg), highlight=False, soft_wrap=True)
            if finds or session.concepts:
                print_objects(session)
            label = "tracking + re-detection" if redetect_every and session.concepts else "tracking"
            with progress_bar(label, unit="frames") as update:
                computed = run_job(session, direction, progress=update,
                                   redetect_every=redetect_every if session.concepts else None)
            if computed:
                console.print(f"computed {len(computed)} frame(s): {ranges(computed)}", highlight=False)
            elif not session.obj_ids:
                console.print("[yellow]nothing was found to track: lower --threshold, or prompt objects with "
                              "--prompts[/yellow]")
            else:
                console.print("nothing left to compute", highlight=False)
            console.print(escape(f"results in {where} ({len(session.obj_ids)} objects, {session.n_frames} frames)"),
                          highlight=False, soft_wrap=True)
            if export_formats:
                out_dir.mkdir(parents=True, exist_ok=True)
            for fmt in export_formats:  # written on the server, downloaded: refreshed on every run
                extra = {"frames_dir": out_dir} if write_frames and fmt in ("coco", "ytvis") else {}
                with progress_bar(f"export {fmt}", unit="bytes") as update:
                    report = session.export(fmt, out_dir / default_name(fmt), force=True,
                                            allow_incomplete=allow_incomplete, progress=update, **extra)
                print_report(report)
        finally:
            session.close()
