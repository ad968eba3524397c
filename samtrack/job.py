"""The whole job: a video and a prompt file in, a result directory out; resumable.

The output directory is the session's workdir (frame cache, memory, results),
signed by the job that computed it (:func:`samtrack.session.job_signature`: the
source's identity and content, reader options, model, checkpoint hash, image
size). Running ``samtrack track`` again on the same job resumes from the last
completed frame (after Ctrl-C or kill -9); an edited prompt file is applied as
corrections (only the spans they affect are recomputed); another job (another
video, changed content, model, checkpoint, size or reader options) is refused
without ``force``; ``force`` recomputes everything.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from samtrack.errors import CacheError, InvalidOptionError, JobMismatchError
from samtrack.io.export import ranges
from samtrack.session.prompts import Mask, Points, make_points

log = logging.getLogger(__name__)
OURS = {"frames.zarr", "results.zarr", "memory.zarr"}


@dataclass(frozen=True)
class JobStart:
    """What a ``track`` run found in its folder and is about to do.

    ``resumed``: the folder held this job's results; ``frames_done``: video frames finished
    for every object and still valid after the prompt file's changes; ``to_compute``: video frames the model
    will compute in this run, ``frames_text`` which ("8-14, 16-29"), ``first_frame`` the first it computes
    (None: nothing to do); ``progress_total``: video frames the run will report (also the keyframes where
    passes start); ``prompts_changed``: prompts added, changed or removed since the last run (applied as
    corrections)."""

    out_dir: Path
    resumed: bool
    n_frames: int
    frames_done: int
    to_compute: int
    first_frame: int | None
    prompts_changed: int
    frames_text: str = ""
    progress_total: int = 0


def read_job(out_dir) -> dict | None:
    """The ``job`` record of a folder (source, model, options), or None."""
    import zarr

    p = Path(out_dir) / "results.zarr"
    if not p.exists():
        return None
    return dict(zarr.open_group(p, mode="r").attrs).get("job")


def start_track(source, prompts, out_dir, *, model: str | None = None, checkpoint=None, image_size=None,
                device: str = "auto", direction: str = "both", force: bool = False, video_options: dict | None = None,
                config=None, finds=(), backend=None):
    """Open (or reopen) the job in ``out_dir`` and apply the prompt file; returns (session, :class:`JobStart`).

    ``prompts``: a prompt file, or None when ``finds`` alone prompt the job; ``finds``: extra
    object-creating prompts as dicts of a prompt file's ``"find"`` list (``{"frame": 0, "text": "cell"}``),
    e.g. from ``samtrack track --text cell``. ``backend``: a model built once by
    :func:`samtrack.session.load_model` for several jobs (then ``model``, ``checkpoint``, ``image_size``
    and ``device`` are the backend's).

    Raises :class:`PromptFileError` for a bad prompt file (checked before any work),
    :class:`JobMismatchError` when ``out_dir`` holds another job and ``force`` is not set,
    :class:`CacheError` when ``out_dir`` is not a samtrack folder."""
    from samtrack.io.registry import open_reader
    from samtrack.session import open_session
    from samtrack.session.prompt_file import PromptFileError, PromptSet, _check_finds, load_prompt_file

    if direction not in ("forward", "backward", "both"):
        raise InvalidOptionError(f"direction {direction!r}: use forward, backward or both")
    video_options = dict(video_options or {})
    out_dir = Path(out_dir)
    if prompts is None and not finds:
        raise PromptFileError("nothing to track: give a prompt file (--prompts) or a text prompt (--text)")
    if prompts is not None and not Path(prompts).is_file():
        raise PromptFileError(f"prompt file {prompts} not found")
    reader_opts = {k: v for k, v in video_options.items() if k != "intensity"}
    with open_reader(source, **reader_opts) as rd:  # validate the prompts before any work
        info = rd.info
    if prompts is not None:
        objects = load_prompt_file(prompts, n_frames=info.n_frames, width=info.width, height=info.height)
    else:
        objects = PromptSet()
    if finds:
        objects.finds += _check_finds(list(finds), Path("--text"), info.n_frames, info.width, info.height)
    if out_dir.exists() and any(out_dir.iterdir()):
        names = {p.name for p in out_dir.iterdir()}
        if not (names & OURS or force):
            raise CacheError(f"{out_dir} exists and is not a samtrack job: choose another --out, or pass --force")
    if force:  # recompute everything (the frame cache stays: it checks its own signature)
        for name in ("results.zarr", "memory.zarr"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    try:
        if model is None and checkpoint is None and backend is None and not force:  # resuming: the job's model
            model = (read_job(out_dir) or {}).get("model")
            image_size = image_size if image_size is not None else (read_job(out_dir) or {}).get("image_size")
        session = open_session(source, model=model, checkpoint=checkpoint, image_size=image_size, device=device,
                               workdir=out_dir, config=config, backend=backend, **video_options)
    except JobMismatchError as e:
        what = str(e).split(": ", 1)[-1].split(". They are not used")[0]
        raise JobMismatchError(f"{out_dir} holds another job ({what}); choose another --out, or pass --force to "
                               "replace it", differences=e.differences) from e
    try:
        resumed = bool(session.obj_ids)
        changed = apply_prompt_changes(session, objects)
        done_before = _frames_done(session)
        session.results.root.attrs["job"] = {"source": str(Path(source).resolve()) if isinstance(source, (str, Path)) else None,
                                             "model": session.backend.spec.name, "image_size": session.backend.image_size,
                                             "direction": direction, "video_options": video_options}
        if prompts is not None:
            shutil.copy(prompts, out_dir / ("prompts" + Path(prompts).suffix))
        plan = session.plan(direction)
        first = next((s.frame for _, steps in plan.sweeps for s in steps if s.compute), None)
        computed = sorted({s.frame for _, steps in plan.sweeps for s in steps if s.compute})
        start = JobStart(out_dir, resumed, session.n_frames, done_before, len(computed), first, changed,
                         ranges(computed), plan.n_frames)
    except BaseException:
        session.close()
        raise
    if resumed:
        log.info("resuming %s: %d of %d frames done, %d prompt(s) changed, %d frame(s) to compute", out_dir,
                 done_before, session.n_frames, changed, len(computed))
    return session, start


def run_track(source, prompts, out_dir, *, direction: str = "both", progress: Callable[[int, int], None] | None = None,
              redetect_every: int | None = None, **kw):
    """:func:`start_track`, then propagate (with ``redetect_every=N``: the job's object-creating
    prompts run again every N frames, see ``TrackingSession.propagate_and_redetect``); returns the
    open session (the caller closes it)."""
    session, _ = start_track(source, prompts, out_dir, direction=direction, **kw)
    try:
        if redetect_every:
            run = session.propagate_and_redetect(redetect_every, direction, progress=progress)
        else:
            run = session.propagate(direction, progress=progress) if session.obj_ids else ()
        for _ in run:
            pass
    except BaseException:
        session.close()
        raise
    return session


def _frames_done(session) -> int:
    if not session.obj_ids:
        return 0
    ok = np.ones(session.n_frames, bool)
    for oid in session.obj_ids:
        st = session.status(oid)
        ok &= (st == 1) | (st == 2)
    return int(ok.sum())


def _same(old, new: dict, width: int, height: int) -> bool:
    """Whether the session's prompt ``old`` equals a validated prompt-file entry ``new``."""
    if new["kind"] == "mask":
        return isinstance(old, Mask) and np.array_equal(old.mask, new["mask"])
    want = make_points(new["points"], new["labels"], width, height, box=new["box"])
    return isinstance(old, Points) and old == want


def apply_prompt_changes(session, objects) -> int:
    """Make the session's objects and prompts equal to a prompt file's; returns how many prompts
    were added, changed or removed. Unchanged prompts are left alone (nothing becomes stale);
    changes are corrections: only the frames they affect are recomputed."""
    n = 0
    finds = list(getattr(objects, "finds", ()))
    for frame, query in list(session.concepts):  # object-creating prompts no longer in the file: their objects go
        if (frame, query) not in finds:
            session.remove_find(frame, query)
            n += 1
    wanted = {o.obj_id for o in objects} | session.find_objects_created()
    for oid in [o for o in session.obj_ids if o not in wanted]:
        session.remove_object(oid)
        n += 1
    for o in objects:
        session.add_object(o.obj_id, name=o.name, parent=o.parent)
        frames = {p["frame"]: p for p in o.prompts}
        for f in [f for f in session.keyframes(o.obj_id) if f not in frames]:
            session.clear_prompts(f, o.obj_id)
            n += 1
        for f, p in sorted(frames.items()):
            if _same(session.prompt_at(f, o.obj_id), p, session.width, session.height):
                continue
            if p["kind"] == "mask":
                session.add_mask(f, o.obj_id, p["mask"])
            elif p["box"] is not None:
                session.add_box(f, o.obj_id, p["box"], points=p["points"], labels=p["labels"])
            else:
                session.add_points(f, o.obj_id, np.asarray(p["points"], float), p["labels"])
            n += 1
    have = list(session.concepts)
    for frame, query in finds:  # new object-creating prompts run after the file's objects exist (ids follow theirs)
        if (frame, query) not in have:
            session.find_objects(frame, query)
            n += 1
    return n


def open_results(out_dir):
    """The ResultStore of a job directory, and its job record."""
    import zarr

    from samtrack.io.result_store import ResultStore

    p = Path(out_dir) / "results.zarr"
    if not p.exists():
        raise CacheError(f"{out_dir} has no results (results.zarr): run `samtrack track` first")
    v = dict(zarr.open_group(p, mode="r").attrs)["video"]
    return ResultStore(p, n_frames=v["n_frames"], height=v["height"], width=v["width"]), read_job(out_dir)
