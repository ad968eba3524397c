"""The endpoints of docs/remote.md. Bodies are checked for their shape only (pydantic); what they mean
(a frame in range, a point inside the frame) is checked by the session itself, so a client gets the
message the local API gives. Every call into a session holds its lock; model work also holds the
device's lock; a change to a propagating session is refused (409)."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from samtrack import __version__
from samtrack.errors import InvalidOptionError, PromptError
from samtrack.remote.wire import WireError, decode_masks, encode_array, encode_masks, encode_result
from samtrack.server.streaming import PropagationJob
from samtrack.server.uploads import export_zip, store_upload


class Body(BaseModel):
    """A request body: unknown keys and loosely typed values are refused (422), as docs/remote.md says."""

    # strict: a string, a bool or a float where an integer belongs is a 422, not silently converted
    model_config = ConfigDict(extra="forbid", strict=True)


# numbers only (a string or null inside is a 422, never a server fault); the session checks shapes and ranges,
# so a ragged or flat list still gets the local API's message
Coords = list[list[float]] | list[float]
Label = Annotated[int, Field(ge=-2**31, le=2**31 - 1)]
# clicks on one prompt: the model's cost grows with their number (200,000 held the device for minutes)
MAX_POINTS = 1000


class OpenBody(Body):
    """``POST /v1/sessions``: the local ``open_session`` arguments (paths inside a served root, absolute or
    relative to it)."""

    video: str
    model: str | None = None
    checkpoint: str | None = None
    image_size: int | None = None
    workdir: str | None = None
    reset: bool = False
    video_options: dict | None = None
    config: dict | None = None


class ObjectBody(Body):
    """``POST .../objects``: add an object (id, display name, lineage parent, display colour)."""

    obj_id: Any
    name: str | None = None
    parent: int | None = None
    color: Any = None


class PromptBody(Body):
    """``POST .../prompts``: points (video pixels (x, y), labels 1/0), a box (x0, y0, x1, y1) or a mask (RLE)."""

    kind: Literal["points", "box", "mask"]
    frame: int
    obj_id: int
    points: Coords | None = None
    labels: list[Label] | None = None
    clear: bool = True
    box: Coords | None = None
    mask: Any = None


class FindBody(Body):
    """``POST .../find``: object-creating prompts (text, exemplar boxes, everything) on one frame."""

    kind: Literal["text", "exemplars", "everything"]
    frame: int
    text: str | None = None
    boxes: Coords | None = None
    box_labels: list[Label] | None = None
    threshold: float | None = None
    options: dict | None = None


class RemoveFindBody(Body):
    """``POST .../remove_find``: remove an object-creating prompt (its record) and the objects it made."""

    frame: int
    query: dict


class ClearBody(Body):
    """``POST .../clear``: clear the prompts on ``frame`` (of one object, or of all)."""

    frame: int
    obj_id: int | None = None


class PropagateBody(Body):
    """``POST .../propagate``: the local ``propagate`` arguments, plus the stream's (docs/remote.md)."""

    direction: str = "forward"
    start: int | None = None
    stop: int | None = None
    obj_ids: list[int] | None = None
    redetect_every: int | None = None
    replay: bool = False
    skip: list[list[int]] | None = None
    logits: bool = False


class ExportBody(Body):
    """``POST .../export``: a format the local export takes, and its options."""

    format: str
    allow_incomplete: bool = False
    options: dict | None = None


def rle_counts(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), without trusting it:
    raises :class:`WireError` for a character outside the alphabet or a string cut in the middle of a value."""
    out: list[int] = []
    i, n = 0, len(counts)
    while i < n:
        x, k, more = 0, 0, True
        while more:
            if i >= n:
                raise WireError("mask: the RLE 'counts' string ends in the middle of a run length")
            c = ord(counts[i]) - 48
            if not 0 <= c < 64:
                raise WireError(f"mask: {counts[i]!r} is not a COCO RLE character (those are '0' to 'o')")
            x |= (c & 0x1f) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def check_rle(rle: dict, height: int, width: int) -> None:
    """Raise :class:`WireError` unless ``rle`` is a COCO RLE of exactly ``height`` x ``width`` pixels: size
    ``[H, W]`` integers, ``counts`` a compressed string whose runs are not negative and add up to H * W (a
    garbage or truncated string would otherwise decode into some mask)."""
    size, counts = rle.get("size"), rle.get("counts")
    if (not isinstance(size, list) or len(size) != 2 or not all(type(v) is int for v in size)
            or not isinstance(counts, str)):
        raise WireError("mask: send a COCO RLE {'size': [H, W], 'counts': str} (samtrack.remote.wire.encode_masks)")
    if size != [height, width]:
        raise WireError(f"mask: an RLE of size {size} for a {height}x{width} video; the mask must be (H, W) "
                        "at video resolution")
    runs = rle_counts(counts)
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise WireError(f"mask: the RLE's runs cover {sum(runs)} pixels (or are negative), not the frame's "
                        f"{height * width}; encode the (H, W) mask with samtrack.remote.wire.encode_masks")


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise WireError(f"{what}={text!r}: give integers separated by commas (obj_ids=1,2)") from None


async def _take_over(sv) -> None:
    """Before a new propagation of ``sv``: a running one whose client has gone (a resume right after a
    disconnect the server has not noticed yet) or that was cancelled is stopped and waited for, so the
    new request need not fail with 409; one whose client is still there is left alone (the new request
    then gets :class:`SessionBusyError`)."""
    from starlette.concurrency import run_in_threadpool

    old = sv.propagation
    if old is None:
        return
    req = getattr(old, "request", None)
    for _ in range(20):  # a client that just left may not be seen as gone yet: look for up to 2 s
        if old.stop.is_set() or (req is not None and await req.is_disconnected()):
            old.cancel()
            await run_in_threadpool(old.join, 120)
            return
        if sv.propagation is not old:
            return
        await asyncio.sleep(0.1)


def make_router(state) -> APIRouter:  # noqa: C901  (one small function per endpoint)
    """The routes, bound to a :class:`~samtrack.server.app.ServerState`."""
    r = APIRouter(prefix="/v1")
    mgr, roots, cfg = state.manager, state.roots, state.config

    def change(sid: str, fn, *, model: bool = True):
        """Run ``fn(session)`` as a change: session lock, idle check, device lock (``model``)."""
        with mgr.use(sid) as sv, sv.lock:
            sv.check_idle()
            if not model:
                return fn(sv.session)
            with sv.device.lock:
                return fn(sv.session)

    def read(sid: str, fn, *, model: bool = False):
        with mgr.use(sid) as sv, sv.lock:
            if model:
                with sv.device.lock:
                    return fn(sv.session)
            return fn(sv.session)

    def state_of(sid: str) -> dict:
        with mgr.use(sid) as sv, sv.lock:
            return sv.state()

    # -- server, files, uploads ------------------------------------------------------------------------------
    @r.get("/server")
    def server_info():
        from samtrack.session.devices import pick_device
        from samtrack.session.models import MODELS

        return {"version": __version__, "protocol": 1, "device": str(pick_device(cfg.device)),
                "roots": [str(p) for p in roots.roots], "models": list(MODELS), "loaded": mgr.models,
                "max_upload_bytes": cfg.max_upload_bytes}

    @r.get("/files")
    def files(under: str | None = None):
        if under is None:
            return {"files": [{"path": str(p), "size": 0, "is_dir": True} for p in roots.roots]}
        base = roots.resolve(under, what="folder", must_exist=True)
        if not base.is_dir():
            raise InvalidOptionError(f"under={under!r} is not a folder")
        out = []
        for e in sorted(base.iterdir(), key=lambda p: p.name):
            real = os.path.realpath(e)
            if not roots.inside(Path(real)):
                continue  # a link leading out: not shown (and refused if named)
            is_dir = os.path.isdir(real)
            out.append({"path": f"{under.rstrip('/')}/{e.name}", "size": 0 if is_dir else os.path.getsize(real),
                        "is_dir": is_dir})
        return {"files": out}

    @r.put("/uploads/{name}")
    async def upload(name: str, request: Request):
        path = await store_upload(request, name, mgr.sessions_dir / "uploads", cfg.max_upload_bytes)
        return {"video": str(path)}

    # -- sessions -------------------------------------------------------------------------------------------
    @r.post("/sessions")
    def open_session(body: OpenBody):
        sv = mgr.open(body.model_dump())
        try:
            with sv.lock:
                return sv.state()
        finally:
            mgr.release(sv)

    @r.get("/sessions")
    def sessions():
        out = []
        for sv in mgr.list():
            with sv.lock:
                if not sv.session.closed:
                    out.append(sv.state())
        return {"sessions": out}

    @r.get("/sessions/{sid}")
    def session_state(sid: str):
        return state_of(sid)

    @r.delete("/sessions/{sid}")
    def close_session(sid: str):
        return {"closed": mgr.close(sid)}

    @r.post("/sessions/{sid}/objects")
    def add_object(sid: str, body: ObjectBody):
        change(sid, lambda s: s.add_object(body.obj_id, name=body.name, parent=body.parent, color=body.color))
        return state_of(sid)

    @r.delete("/sessions/{sid}/objects/{oid}")
    def remove_object(sid: str, oid: int):
        change(sid, lambda s: s.remove_object(oid))
        return state_of(sid)

    @r.post("/sessions/{sid}/prompts")
    def prompt(sid: str, body: PromptBody):
        if body.points is not None and len(body.points) > MAX_POINTS:
            raise PromptError(f"{len(body.points)} points on one prompt: this server takes at most {MAX_POINTS}; "
                              "a few clicks (or a box or a mask) are what the model needs")

        def run(s):
            if body.kind == "points":
                return s.add_points(body.frame, body.obj_id, body.points, body.labels, clear=body.clear)
            if body.kind == "box":
                return s.add_box(body.frame, body.obj_id, body.box, points=body.points, labels=body.labels)
            mask = body.mask
            if isinstance(mask, dict):
                check_rle(mask, s.height, s.width)
                mask = decode_masks([mask], s.height, s.width)[0]
            elif mask is not None:
                raise WireError("mask: send a COCO RLE {'size': [H, W], 'counts': str} (samtrack.remote.wire)")
            return s.add_mask(body.frame, body.obj_id, mask)

        return encode_result(change(sid, run))

    @r.post("/sessions/{sid}/find")
    def find(sid: str, body: FindBody):
        def run(s):
            th = {} if body.threshold is None else {"threshold": body.threshold}
            if body.kind == "text":
                return s.add_text(body.frame, body.text, boxes=body.boxes, box_labels=body.box_labels, **th)
            if body.kind == "exemplars":
                return s.add_exemplars(body.frame, body.boxes, body.box_labels, text=body.text, **th)
            return s.segment_everything(body.frame, **th, **(body.options or {}))

        found = change(sid, run)
        return {"created": found.created, "updated": sorted(found.matched),
                "result": encode_result(found.result) if found.result is not None else None}

    @r.post("/sessions/{sid}/remove_find")
    def remove_find(sid: str, body: RemoveFindBody):
        from samtrack.session.prompts import prompt_from_record

        try:
            query = prompt_from_record(body.query)
        except (KeyError, TypeError, ValueError) as e:
            raise WireError(f"query: not a concept record ({e}); send one from the session state's 'concepts'") from e
        return {"removed": change(sid, lambda s: s.remove_find(body.frame, query))}

    @r.get("/sessions/{sid}/created")
    def created(sid: str):
        return {"obj_ids": sorted(int(o) for o in read(sid, lambda s: s.find_objects_created()))}

    @r.post("/sessions/{sid}/clear")
    def clear(sid: str, body: ClearBody):
        change(sid, lambda s: s.clear_prompts(body.frame, body.obj_id))
        return state_of(sid)

    @r.post("/sessions/{sid}/reset")
    def reset(sid: str):
        change(sid, lambda s: s.reset())
        return state_of(sid)

    # -- results ----------------------------------------------------------------------------------------------
    @r.get("/sessions/{sid}/objects/{oid}/status")
    def status(sid: str, oid: int):
        return {"status": encode_array(read(sid, lambda s: s.status(oid)))}

    @r.get("/sessions/{sid}/objects/{oid}/scores")
    def scores(sid: str, oid: int):
        def run(s):
            s.status(oid)  # an unknown object: the session's own error
            return s.results.scores(oid)

        score, iou = read(sid, run)
        return {"object_score": encode_array(np.asarray(score, np.float32)),
                "iou": encode_array(np.asarray(iou, np.float32))}

    @r.get("/sessions/{sid}/frames/{f}/result")
    def frame_result(sid: str, f: int, obj_ids: str | None = None, logits: bool = False):
        ids = _ints(obj_ids, "obj_ids")
        return encode_result(read(sid, lambda s: s.frame_result(f, ids), model=True), logits=logits)

    @r.get("/sessions/{sid}/frames/{f}/labels")
    def labels(sid: str, f: int):
        def run(s):
            s._check_frame(f)  # the local API's message for a frame out of range
            return s.results.label_frame(f)

        return {"labels": encode_array(read(sid, run))}

    @r.get("/sessions/{sid}/frames/{f}/image")
    def image(sid: str, f: int, format: str = "png", quality: int = 90):
        import cv2

        if format not in ("png", "jpeg", "jpg"):
            raise InvalidOptionError(f"format={format!r}: png or jpeg")
        if not 1 <= quality <= 100:
            raise InvalidOptionError(f"quality={quality}: from 1 to 100")
        rgb = read(sid, lambda s: s.frames.read(f))
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        if format == "png":
            ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            media = "image/png"
        else:
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
            media = "image/jpeg"
        if not ok:
            raise RuntimeError(f"frame {f} could not be encoded as {format}")
        return Response(buf.tobytes(), media_type=media)

    @r.get("/sessions/{sid}/prompts/{oid}/{f}")
    def prompt_at(sid: str, oid: int, f: int):
        from samtrack.session.prompts import prompt_record

        p = read(sid, lambda s: s.prompt_at(f, oid))
        if p is None:
            return {"prompt": None, "mask": None}
        rec, mask = prompt_record(p)
        return {"prompt": rec, "mask": encode_masks(np.asarray(mask, bool)[None])[0] if mask is not None else None}

    # -- propagation, cancel, flush, export --------------------------------------------------------------------
    @r.post("/sessions/{sid}/propagate")
    async def propagate(sid: str, body: PropagateBody, request: Request):
        from starlette.concurrency import run_in_threadpool

        sv = await run_in_threadpool(mgr.acquire, sid)
        try:
            job = PropagationJob(sv, body, asyncio.get_running_loop())
            job.served_release = lambda: mgr.release(sv)

            job.request = request
            await _take_over(sv)

            def claim():
                with sv.lock, sv.owner_lock:
                    sv.check_idle()
                    sv.propagation = job

            await run_in_threadpool(claim)
        except BaseException:
            mgr.release(sv)
            raise
        job.start()
        first = await job.first()  # an error before the first line: an HTTP error status
        return StreamingResponse(job.lines(request, first), media_type="application/x-ndjson")

    @r.post("/sessions/{sid}/cancel")
    def cancel(sid: str):
        with mgr.use(sid) as sv:
            job = sv.propagation
            if job is None:
                return {"cancelled": False}
            job.cancel()
            return {"cancelled": True}

    @r.post("/sessions/{sid}/flush")
    def flush(sid: str):
        read(sid, lambda s: s.flush())
        return {}

    @r.post("/sessions/{sid}/export")
    def export(sid: str, body: ExportBody):
        def run(s):
            return export_zip(s, body.format, mgr.sessions_dir / "exports", allow_incomplete=body.allow_incomplete,
                              options=body.options)

        path, report, cleanup = change(sid, run, model=False)
        from fastapi.responses import FileResponse
        from starlette.background import BackgroundTask

        return FileResponse(path, media_type="application/zip", filename=f"{report['name']}.zip",
                            headers={"X-Samtrack-Export": json.dumps(report)}, background=BackgroundTask(cleanup))

    return r
