"""The whole job: a video and a prompt file in, a result directory out; resumable.

The output directory is the session's workdir (frame cache, memory, results).
Its ``job`` attribute records what it was made from; running the same job
again resumes from the last completed frame (after Ctrl-C or kill -9), and a
different job refuses to overwrite it without ``force``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

from samtrack.errors import CacheError, InvalidOptionError

log = logging.getLogger(__name__)


def job_spec(source, prompts, *, model: str, image_size, direction: str, video_options: dict) -> dict:
    return {"source": str(Path(source).resolve()), "prompts_sha256": hashlib.sha256(Path(prompts).read_bytes()).hexdigest(),
            "model": model, "image_size": image_size, "direction": direction,
            "video_options": json.loads(json.dumps(video_options))}


def read_job(out_dir) -> dict | None:
    import zarr

    p = Path(out_dir) / "results.zarr"
    if not p.exists():
        return None
    return dict(zarr.open_group(p, mode="r").attrs).get("job")


def run_track(source, prompts, out_dir, *, model: str = "sam2.1_hiera_tiny", checkpoint=None, image_size=None,
              device: str = "auto", direction: str = "both", force: bool = False,
              progress: Callable[[int, int], None] | None = None, video_options: dict | None = None, config=None):
    """Track ``source`` with the prompts of ``prompts`` into ``out_dir``; returns the open session."""
    from samtrack.session import open_session
    from samtrack.session.prompt_file import apply_prompts, load_prompt_file

    if direction not in ("forward", "backward", "both"):
        raise InvalidOptionError(f"direction {direction!r}: use forward, backward or both")
    video_options = dict(video_options or {})
    out_dir = Path(out_dir)
    if not Path(prompts).is_file():
        from samtrack.session.prompt_file import PromptFileError

        raise PromptFileError(f"prompt file {prompts} not found")
    from samtrack.io.registry import open_reader

    reader_opts = {k: v for k, v in video_options.items() if k not in ("intensity",)}  # store options
    with open_reader(source, **reader_opts) as rd:  # validate the prompts before any work
        info = rd.info
    objects = load_prompt_file(prompts, n_frames=info.n_frames, width=info.width, height=info.height)
    spec = job_spec(source, prompts, model=model, image_size=image_size, direction=direction, video_options=video_options)
    old = read_job(out_dir)
    if old is not None and old != spec:
        if not force:
            raise CacheError(f"{out_dir} holds another job (source {old.get('source')}, model {old.get('model')}); "
                             "choose another --out, or pass --force to replace it")
        shutil.rmtree(out_dir)
    elif old is None and out_dir.exists() and any(out_dir.iterdir()):
        ours = {p.name for p in out_dir.iterdir()} <= {"frames.zarr", "results.zarr", "memory.zarr"}
        if not (ours or force):
            raise CacheError(f"{out_dir} exists and is not a samtrack job: choose another --out, or pass --force")
        for name in ("results.zarr", "memory.zarr"):  # an interrupted start: begin again (the frame cache stays)
            shutil.rmtree(out_dir / name, ignore_errors=True)
    session = open_session(source, model=model, checkpoint=checkpoint, image_size=image_size, device=device,
                           workdir=out_dir, config=config, **video_options)
    try:
        if read_job(out_dir) is None:
            apply_prompts(session, objects)
            session.results.root.attrs["job"] = spec
            shutil.copy(prompts, out_dir / ("prompts" + Path(prompts).suffix))
        else:
            log.info("resuming the job in %s", out_dir)
        for _ in session.propagate(direction, progress=progress):
            pass
    except BaseException:
        session.close()
        raise
    return session


def open_results(out_dir):
    """The ResultStore of a job directory, and its job record."""
    import zarr

    from samtrack.io.result_store import ResultStore

    p = Path(out_dir) / "results.zarr"
    if not p.exists():
        raise CacheError(f"{out_dir} has no results (results.zarr): run `samtrack track` first")
    v = dict(zarr.open_group(p, mode="r").attrs)["video"]
    return ResultStore(p, n_frames=v["n_frames"], height=v["height"], width=v["width"]), read_job(out_dir)
