"""Prompt files (JSON or YAML), validated with errors that name the field and object.

    {"objects": [{"id": 1, "name": "cell-1", "parent": null,
                  "prompts": [{"frame": 0, "points": [[x, y], ...], "labels": [1, ...]},
                              {"frame": 40, "box": [x0, y0, x1, y1]},
                              {"frame": 90, "mask": "relative/path.png"}]}]}

Object-creating prompts go in a top-level ``"find"`` list (then ``"objects"`` may be absent)::

    {"find": [{"frame": 0, "text": "cell", "threshold": 0.5},
              {"frame": 0, "boxes": [[x0, y0, x1, y1], ...], "box_labels": [1, 0]},
              {"frame": 0, "everything": true}]}

Each detection becomes an object numbered after the file's objects and named after the text
("cell 1", "cell 2", ...); text and exemplar boxes need a SAM3 model, ``everything`` a SAM2 model.

Points are (x, y) in video pixels; labels 1 positive / 0 negative (default all 1);
a box may carry refining points (a box partly outside the frame is clipped to it);
a mask is an image at video size, its path relative to the prompt file: a binary
image (one nonzero value), or any label image (DAVIS indexed PNG, label TIFF, RGB)
with ``"label": N`` (``[r, g, b]`` for colour) naming the object's value, or
``"threshold": t`` (pixels above t). Several labels without ``"label"`` are an
error: the object's label is never guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtrack.errors import PromptError, SamtrackError
from samtrack.session.prompts import check_box, make_mask, make_points


MAX_OBJECT_ID = 2**31 - 1  # object ids are stored as int32 / written as uint32 labels
_PROMPT_KEYS = {"frame", "points", "labels", "box", "mask", "label", "threshold"}


_FIND_KEYS = {"frame", "text", "boxes", "box_labels", "threshold", "everything"}


class PromptFileError(PromptError):
    """A prompt file that cannot be used; the message names the field and the object."""


class PromptSet(list):
    """The validated objects of a prompt file (a list of :class:`ObjectPrompts`), with ``finds``:
    its object-creating prompts as ``(frame, Concept | Everything)`` pairs, in file order."""

    def __init__(self, objects=(), finds=()):
        super().__init__(objects)
        self.finds: list[tuple[int, object]] = list(finds)


@dataclass(frozen=True)
class ObjectPrompts:
    obj_id: int
    name: str | None
    parent: int | None
    prompts: tuple[dict, ...]  # validated: {"frame", "kind", ...}


def load_prompt_file(path, *, n_frames: int, width: int, height: int) -> list[ObjectPrompts]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PromptFileError(f"{path}: cannot read the prompt file ({e})") from e
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); save it as UTF-8 "
                              "JSON or YAML") from e
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json/yaml parser errors
        raise PromptFileError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} ({e})") from e
    if not isinstance(data, dict):
        raise PromptFileError(f"{path}: needs a non-empty list under \"objects\" or \"find\"")
    finds = _check_finds(data.get("find"), path, n_frames, width, height)
    if not finds or "objects" in data:
        if not isinstance(data.get("objects"), list) or not data["objects"]:
            raise PromptFileError(f"{path}: needs a non-empty list under \"objects\" (or \"find\" for "
                                  "text / exemplar / everything prompts)")
    data.setdefault("objects", [])
    seen: set[int] = set()
    out = []
    for i, obj in enumerate(data["objects"]):
        where = f"{path}: objects[{i}]"
        if not isinstance(obj, dict) or "id" not in obj:
            raise PromptFileError(f"{where}: missing \"id\" (a positive integer)")
        oid = obj["id"]
        if not isinstance(oid, int) or isinstance(oid, bool) or not 1 <= oid <= MAX_OBJECT_ID:
            raise PromptFileError(f"{where}: \"id\" must be an integer from 1 to {MAX_OBJECT_ID}, got {oid!r}")
        if oid in seen:
            raise PromptFileError(f"{where}: duplicate id {oid}")
        seen.add(oid)
        where = f"{path}: object {oid}"
        parent = obj.get("parent")
        if parent is not None and (not isinstance(parent, int) or parent == oid):
            raise PromptFileError(f"{where}: \"parent\" must be another object's id or null")
        prompts = obj.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise PromptFileError(f"{where}: needs a non-empty \"prompts\" list")
        checked = tuple(_check_prompt(p, j, where, path.parent, n_frames, width, height) for j, p in enumerate(prompts))
        frames = [c["frame"] for c in checked]
        dup = sorted({f for f in frames if frames.count(f) > 1})
        if dup:
            raise PromptFileError(f"{where}: several prompts on frame {dup[0]}; give one per frame (a box may carry "
                                  "refining points)")
        out.append(ObjectPrompts(oid, obj.get("name"), parent, checked))
    ids = {o.obj_id for o in out}
    for o in out:
        if o.parent is not None and o.parent not in ids:
            raise PromptFileError(f"{path}: object {o.obj_id}: parent {o.parent} is not an object of this file")
    return PromptSet(out, finds)


def _check_finds(finds, path: Path, n_frames: int, width: int, height: int) -> list[tuple[int, object]]:
    """Validated ``"find"`` entries as (frame, Concept | Everything)."""
    from samtrack.session.prompts import Everything, make_concept

    if finds is None:
        return []
    if not isinstance(finds, list) or not finds:
        raise PromptFileError(f"{path}: \"find\" must be a non-empty list of {{\"frame\": N, \"text\": ...}}")
    out = []
    for j, p in enumerate(finds):
        w = f"{path}: find[{j}]"
        if not isinstance(p, dict) or "frame" not in p:
            raise PromptFileError(f"{w}: missing \"frame\"")
        f = p["frame"]
        if not isinstance(f, int) or isinstance(f, bool) or not 0 <= f < n_frames:
            raise PromptFileError(f"{w}: \"frame\" must be a frame index 0..{n_frames - 1}, got {f!r}")
        unknown = sorted(set(p) - _FIND_KEYS)
        if unknown:
            raise PromptFileError(f"{w}: unknown key(s) {unknown}; a find prompt has \"frame\" and \"text\" and/or "
                                  "\"boxes\" (+ \"box_labels\"), or \"everything\": true; optional \"threshold\"")
        thr = p.get("threshold")
        if thr is not None and (not isinstance(thr, (int, float)) or isinstance(thr, bool)):
            raise PromptFileError(f"{w}: \"threshold\" must be a number between 0 and 1")
        try:
            if p.get("everything"):
                if "text" in p or "boxes" in p:
                    raise PromptFileError(f"{w}: \"everything\" takes no text or boxes")
                if thr is not None and not 0 <= thr <= 1:
                    raise PromptError("threshold must be between 0 and 1")
                out.append((f, Everything(0.8 if thr is None else float(thr))))
            else:
                out.append((f, make_concept(p.get("text"), p.get("boxes"), p.get("box_labels"), width=width,
                                            height=height, threshold=0.5 if thr is None else thr)))
        except PromptFileError:
            raise
        except SamtrackError as e:
            raise PromptFileError(f"{w}: {e}") from e
        except (TypeError, ValueError) as e:
            raise PromptFileError(f"{w}: malformed ({e})") from e
    return out


def _check_prompt(p, j, where, base: Path, n_frames, width, height) -> dict:
    w = f"{where}, prompts[{j}]"
    if not isinstance(p, dict) or "frame" not in p:
        raise PromptFileError(f"{w}: missing \"frame\"")
    f = p["frame"]
    if not isinstance(f, int) or isinstance(f, bool):
        raise PromptFileError(f"{w}: \"frame\" must be a whole number (0-based frame index), got {f!r}")
    if not 0 <= f < n_frames:
        raise PromptFileError(f"{w}: frame {f!r} is out of range 0..{n_frames - 1}")
    unknown = sorted(set(p) - _PROMPT_KEYS)
    if unknown:
        raise PromptFileError(f"{w}: unknown key(s) {unknown}; a prompt has \"frame\" and \"points\" (+ \"labels\"), "
                              "\"box\" or \"mask\" (+ \"label\" or \"threshold\")")
    kinds = [k for k in ("points", "box", "mask") if k in p]
    if not kinds or ("mask" in kinds and len(kinds) > 1):
        raise PromptFileError(f"{w}: give \"points\" (with \"labels\"), a \"box\" (optionally with points), or a \"mask\"")
    try:
        if "mask" in p:
            return {"frame": f, "kind": "mask", "mask": _mask_prompt(p, w, base, width, height)}
        pts = p.get("points")
        labels = p.get("labels", [1] * len(pts) if pts else None)
        box = check_box(p["box"], width, height) if "box" in p else None
        make_points(pts, labels, width, height, box=box)
        return {"frame": f, "kind": "box" if box else "points", "points": pts, "labels": labels, "box": box}
    except PromptFileError:
        raise
    except SamtrackError as e:
        raise PromptFileError(f"{w}: {e}") from e
    except (TypeError, ValueError) as e:
        raise PromptFileError(f"{w}: malformed ({e})") from e


def _mask_prompt(p: dict, w: str, base: Path, width: int, height: int) -> np.ndarray:
    """The (H, W) bool mask of a ``{"mask": path, "label": ..., "threshold": ...}`` prompt."""
    from samtrack.io.readers.image_folder import read_label_image

    mpath = base / str(p["mask"])
    if not mpath.is_file():
        raise PromptFileError(f"{w}: mask file {mpath} not found")
    label, threshold = p.get("label"), p.get("threshold")
    if label is not None and threshold is not None:
        raise PromptFileError(f"{w}: give \"label\" or \"threshold\", not both")
    try:
        img = read_label_image(mpath)
    except (OSError, SamtrackError) as e:  # not an image (PIL's UnidentifiedImageError is an OSError)
        raise PromptFileError(f"{w}: mask {mpath.name} is not a readable image ({e}); give a PNG or TIFF") from e
    if threshold is not None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise PromptFileError(f"{w}: \"threshold\" must be a number (pixels above it are the object)")
        img = (img.max(axis=2) if img.ndim == 3 else img) > threshold
    try:
        return make_mask(img, width, height, label=label).mask
    except SamtrackError as e:
        msg = str(e).replace("label=N", "\"label\": N").replace("label=[r, g, b]", "\"label\": [r, g, b]")
        raise PromptFileError(f"{w}: mask {mpath.name}: {msg}") from e


def apply_prompts(session, objects: list[ObjectPrompts]) -> int:
    """Add every prompt of a file to a session; returns how many were added."""
    n = 0
    for o in objects:
        session.add_object(o.obj_id, name=o.name, parent=o.parent)
        for p in o.prompts:
            if p["kind"] == "mask":
                session.add_mask(p["frame"], o.obj_id, p["mask"])
            elif p["kind"] == "box":
                session.add_box(p["frame"], o.obj_id, p["box"], points=p["points"], labels=p["labels"])
            else:
                session.add_points(p["frame"], o.obj_id, np.asarray(p["points"], float), p["labels"])
            n += 1
    return n
