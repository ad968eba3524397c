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
from samtrack.io.folder_lock import LOCK_NAME, FolderLock
from samtrack.session.prompts import Mask, Points, make_points

log = logging.getLogger(__name__)
OURS = {"frames.zarr", "results.zarr", "memory.zarr", LOCK_NAME}  # the lock alone: an open that failed early


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

    _check_direction(direction)
    video_options = dict(video_options or {})
    out_dir = Path(out_dir)
    check_job_prompts(prompts, finds)
    reader_opts = {k: v for k, v in video_options.items() if k != "intensity"}
    with open_reader(source, **reader_opts) as rd:  # validate the prompts before any work
        info = rd.info
    objects = load_job_prompts(prompts, finds, n_frames=info.n_frames, width=info.width, height=info.height)
    if out_dir.exists() and any(out_dir.iterdir()):
        names = {p.name for p in out_dir.iterdir()}
        if not (names & OURS or force):
            raise CacheError(f"{out_dir} exists and is not a samtrack job: choose another --out, or pass --force")
    lock = FolderLock(out_dir).acquire(purpose="samtrack track")  # held before --force removes anything
    try:
        if force:  # recompute everything (the frame cache stays: it checks its own signature)
            for name in ("results.zarr", "memory.zarr"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
        if model is None and checkpoint is None and backend is None and not force:  # resuming: the job's model
            model = (read_job(out_dir) or {}).get("model")
            image_size = image_size if image_size is not None else (read_job(out_dir) or {}).get("image_size")
        session = open_session(source, model=model, checkpoint=checkpoint, image_size=image_size, device=device,
                               workdir=out_dir, config=config, backend=backend, folder_lock=lock, **video_options)
    except JobMismatchError as e:
        lock.release()  # open_session released it already; a second release is a no-op
        what = str(e).split(": ", 1)[-1].split(". They are not used")[0]
        raise JobMismatchError(f"{out_dir} holds another job ({what}); choose another --out, or pass --force to "
                               "replace it", differences=e.differences) from e
    except BaseException:
        lock.release()
        raise
    try:
        resumed, changed, done_before = apply_job_prompts(session, objects)
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


@dataclass(frozen=True)
class RemoteJobStart:
    """What a ``track --server`` run found in its session on the server (:func:`start_remote_track`).

    ``workdir``: the session's folder on the server; ``resumed``: the session held objects already;
    ``frames_done``: video frames finished for every object and still valid after the prompt file's
    changes; ``prompts_changed``: prompts added, changed or removed since the last run (applied as
    corrections). What the run computes is the server's plan: :func:`run_job` returns it afterwards."""

    workdir: str
    resumed: bool
    n_frames: int
    frames_done: int
    prompts_changed: int


def start_remote_track(client, video, prompts, *, workdir=None, model: str | None = None, checkpoint=None,
                       image_size: int | None = None, force: bool = False, video_options: dict | None = None,
                       config=None, finds=()):
    """Open (or reopen) the job's session on a ``samtrack serve`` server and apply the prompt file;
    returns (:class:`~samtrack.remote.session.RemoteSession`, :class:`RemoteJobStart`).

    ``client``: a :class:`samtrack.remote.client.Client`; ``video``, ``workdir`` (None: the server's default
    folder for this video, model and size) and ``checkpoint`` are paths on the server. ``prompts`` (a local
    file, its mask images read here) and ``finds`` are as :func:`start_track` takes them: the file is
    validated against the remote video's frame count and size before any prompt is sent, then applied as
    :func:`apply_prompt_changes` applies it (the same session folder again resumes: only what changed or is
    missing is computed). ``force``: discard the session's results first (``reset``).

    Raises :class:`PromptFileError` for a bad prompt file, :class:`JobMismatchError` when the folder holds
    another job and ``force`` is not set, and the client's errors
    (:class:`~samtrack.errors.ForbiddenPathError` for a path outside the server's roots, ...)."""
    from samtrack.errors import RemoteError

    check_job_prompts(prompts, finds)
    try:
        session = client.open_session(video, model=model, checkpoint=checkpoint, image_size=image_size,
                                      workdir=workdir, reset=force, config=config, **dict(video_options or {}))
    except JobMismatchError as e:
        what = str(e).split(": ", 1)[-1].split(". They are not used")[0]
        where = f"{workdir} on the server" if workdir is not None else "the server's session folder for this video"
        raise JobMismatchError(f"{where} holds another job ({what}); choose another --workdir, or pass --force to "
                               "replace it", differences=e.differences) from e
    try:
        objects = load_job_prompts(prompts, finds, n_frames=session.n_frames, width=session.width,
                                   height=session.height)
        resumed, changed, done = apply_job_prompts(session, objects)
    except BaseException as e:
        try:
            session.close()
        except RemoteError as closing:  # the first error is the one to report
            log.warning("closing the remote session after %s: %s", type(e).__name__, closing)
        raise
    if resumed:
        log.info("resuming %s on %s: %d of %d frames done, %d prompt(s) changed", session.workdir, client.url,
                 done, session.n_frames, changed)
    return session, RemoteJobStart(str(session.workdir), resumed, session.n_frames, done, changed)


def run_job(session, direction: str = "both", *, progress: Callable[[int, int], None] | None = None,
            redetect_every: int | None = None) -> list[int]:
    """Propagate a job's session, local or remote (with ``redetect_every=N``: the job's object-creating
    prompts run again every N frames, see ``TrackingSession.propagate_and_redetect``). ``progress(done,
    total)`` counts the frames the propagation reports. Returns the video frames this run computed,
    ascending: those never run or stale for some object before, propagated now (prompted frames and
    frames already valid are not computed again)."""
    _check_direction(direction)
    before = {oid: np.array(session.status(oid)) for oid in session.obj_ids}
    if redetect_every:
        run = session.propagate_and_redetect(redetect_every, direction, progress=progress)
    else:
        run = session.propagate(direction, progress=progress) if session.obj_ids else ()
    for _ in run:
        pass
    n = session.n_frames
    computed = np.zeros(n, bool)
    for oid in session.obj_ids:
        old = before.get(oid, np.zeros(n, np.uint8))  # objects found by re-detection: every frame is new
        computed |= ((old == 0) | (old == 3)) & (np.asarray(session.status(oid)) == 1)
    return np.flatnonzero(computed).tolist()


def run_track(source, prompts, out_dir, *, direction: str = "both", progress: Callable[[int, int], None] | None = None,
              redetect_every: int | None = None, **kw):
    """:func:`start_track`, then :func:`run_job`; returns the open session (the caller closes it)."""
    session, _ = start_track(source, prompts, out_dir, direction=direction, **kw)
    try:
        run_job(session, direction, progress=progress, redetect_every=redetect_every)
    except BaseException:
        session.close()
        raise
    return session


def _check_direction(direction: str) -> None:
    if direction not in ("forward", "backward", "both"):
        raise InvalidOptionError(f"direction {direction!r}: use forward, backward or both")


def check_job_prompts(prompts, finds=()) -> None:
    """Raise :class:`PromptFileError` when there is nothing to track (no prompt file and no ``finds``) or the
    prompt file ``prompts`` does not exist: the checks that need no video, made before any work."""
    from samtrack.session.prompt_file import PromptFileError

    if prompts is None and not finds:
        raise PromptFileError("nothing to track: give a prompt file (--prompts) or a text prompt (--text)")
    if prompts is not None and not Path(prompts).is_file():
        raise PromptFileError(f"prompt file {prompts} not found")


def load_job_prompts(prompts, finds=(), *, n_frames: int, width: int, height: int):
    """The job's prompts: the prompt file ``prompts`` (or none) plus ``finds`` (dicts of a prompt file's
    ``"find"`` list), validated against a video of ``n_frames`` frames of ``width`` x ``height`` pixels;
    a :class:`~samtrack.session.prompt_file.PromptSet`. Raises :class:`PromptFileError` naming the field and
    the object."""
    from samtrack.session.prompt_file import PromptSet, _check_finds, load_prompt_file

    check_job_prompts(prompts, finds)
    objects = load_prompt_file(prompts, n_frames=n_frames, width=width, height=height) if prompts is not None \
        else PromptSet()
    if finds:
        objects.finds += _check_finds(list(finds), Path("--text"), n_frames, width, height)
    return objects


def apply_job_prompts(session, objects) -> tuple[bool, int, int]:
    """:func:`apply_prompt_changes` on any session (:class:`~samtrack.session.protocol.Session`, local or
    remote); returns (resumed: the session held objects before, prompts changed, video frames done for every
    object afterwards)."""
    resumed = bool(session.obj_ids)
    changed = apply_prompt_changes(session, objects)
    return resumed, changed, _frames_done(session)


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
    """Make the session's objects and prompts equal to a prompt file's (``objects``: a validated
    :class:`~samtrack.session.prompt_file.PromptSet`); returns how many prompts were added, changed or
    removed. Works on any session, local or remote (:class:`~samtrack.session.protocol.Session` with
    ``concepts``, ``find_objects``, ``find_objects_created`` and ``remove_find``). Unchanged prompts are
    left alone (nothing becomes stale); changes are corrections: only the frames they affect are
    recomputed. Raises the session's errors (:class:`PromptError`, ...)."""
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
