"""Manifests: which videos a batch tracks, with which prompts and options, validated as a whole.

Three forms:

- CSV with a header row: ``video,prompts,name,model,checkpoint,image_size,direction,exports,text,text_frame``
  (only ``video`` is required; an empty cell takes the batch's default). ``exports`` and ``text``
  hold several values separated by ``;`` (``exports`` also by spaces or commas). Rows whose video starts
  with ``#`` are comments.
- YAML: a list of rows with the same keys, or ``{"defaults": {...}, "videos": [...]}``; ``exports``
  and ``text`` may be lists.
- A folder: every video or TIFF stack in it, each with the prompt file of the same stem
  (``a.mp4`` + ``a.json`` / ``a.yaml`` / ``a.yml``, beside it or in ``prompts/``).

Relative paths are relative to the manifest's folder. Rows are numbered from 1 in file order (a
CSV's header is not a row). Every row is checked before any work: the video opens, the prompt file
is valid for it, the model and options exist, names are unique. Every problem is reported at once
in one :class:`ManifestError`, one line per bad row. A video file that exists but cannot be decoded
(damaged, truncated before its index, empty) is not a manifest mistake: it is kept, and fails alone
with its reason when the batch runs.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from samtrack.batch.records import VideoJob
from samtrack.errors import (CorruptSourceError, DecodeError, EmptySourceError, MixedFrameSizeError, SamtrackError)

log = logging.getLogger(__name__)
KEYS = ("video", "prompts", "name", "model", "checkpoint", "image_size", "direction", "exports", "text", "text_frame")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".tif", ".tiff", ".btf")
PROMPT_SUFFIXES = (".json", ".yaml", ".yml")
DAMAGED = (CorruptSourceError, DecodeError, EmptySourceError, MixedFrameSizeError)  # the video fails alone
KEY_FORMAT = 1  # bump when what a job is computed from changes meaning


class ManifestError(SamtrackError, ValueError):
    """A manifest that cannot run as written; ``problems``: one line per bad row (with its row
    number), or one line about the file itself."""

    def __init__(self, message: str, *, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass(frozen=True)
class RowDefaults:
    """Options for rows that leave them empty (the ``samtrack batch`` options). ``model`` None: the
    model the checkpoint file is, else the stored default; ``image_size`` None: the model's own."""

    model: str | None = None
    checkpoint: str | None = None
    image_size: int | None = None
    direction: str = "both"
    exports: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    text_frame: int = 0
    features: bool = False  # encode every frame first, keeping its image features in the job folder


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``jobs``: one per row, in file order; ``damaged``: name -> why that
    video cannot be decoded (it is reported as failed without being run)."""

    path: Path
    jobs: tuple[VideoJob, ...]
    damaged: dict[str, str] = field(default_factory=dict)

    def select(self, names) -> Manifest:
        """Only the rows named (``--only``); an unknown name is a :class:`ManifestError`."""
        names = list(names)
        known = {j.name for j in self.jobs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ManifestError(f"no row named {', '.join(map(repr, unknown))} in {self.path}; names are: "
                                + ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else ""))
        keep = set(names)
        return Manifest(self.path, tuple(j for j in self.jobs if j.name in keep),
                        {k: v for k, v in self.damaged.items() if k in keep})


@dataclass
class _Row:
    number: int
    values: dict
    problems: list[str] = field(default_factory=list)

    def label(self) -> str:
        """"row N (name)" for error lines, N 1-based as the user numbers rows."""
        what = self.values.get("name") or (Path(str(self.values["video"])).name if self.values.get("video") else "")
        return f"row {self.number}" + (f" ({what})" if what else "")


def load_manifest(path, out_dir, *, defaults: RowDefaults = RowDefaults()) -> Manifest:
    """Read and validate a manifest (a CSV or YAML file, or a folder of videos with prompt files);
    job folders are ``out_dir/<name>``. Opens every video (headers and frame counts, in parallel
    threads) and every prompt file; loads nothing onto a device.

    Raises :class:`ManifestError` listing every bad row, or naming what is wrong with the file."""
    path, out_dir = Path(path), Path(out_dir)
    if not path.exists():
        raise ManifestError(f"manifest {path} not found: give a CSV or YAML file, or a folder of videos")
    rows = _folder_rows(path, defaults) if path.is_dir() else _file_rows(path)
    if not rows:
        raise ManifestError(f"{path} lists no videos: add rows (a header `video,prompts` then one line per video)")
    base = path if path.is_dir() else path.parent
    for r in rows:
        _normalise(r, base, defaults)
    _check_names(rows, out_dir)
    _check_models(rows)
    infos = _open_videos(rows)
    damaged = {}
    for r in rows:
        info = infos.get(r.number)
        if isinstance(info, str):
            damaged[r.values["name"]] = info
        elif info is not None and not r.problems:
            _check_prompts(r, info)
    bad = [f"{r.label()}: {p}" for r in rows for p in r.problems]
    if bad:
        head = f"{path}: {len(bad)} problem(s) in {len({b.split(':')[0] for b in bad})} row(s); nothing was run"
        raise ManifestError(head + "\n  " + "\n  ".join(bad), problems=bad)
    jobs = tuple(_job(r, out_dir, infos.get(r.number), defaults.features) for r in rows)
    return Manifest(path, jobs, damaged)


# -- reading ------------------------------------------------------------------------------------
def _file_rows(path: Path) -> list[_Row]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix in (".yaml", ".yml", ".json"):
        return _yaml_rows(path)
    raise ManifestError(f"{path}: a manifest is a .csv, .yaml/.yml or .json file, or a folder of videos")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e}); save it as UTF-8 text") from e


def _csv_rows(path: Path) -> list[_Row]:
    reader = csv.DictReader(_read_text(path).splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if "video" not in header:
        raise ManifestError(f"{path}: the first line must be a header naming the columns, with at least `video` "
                            f"(columns: {', '.join(KEYS)})")
    unknown = [h for h in header if h not in KEYS]
    if unknown:
        raise ManifestError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; columns are: {', '.join(KEYS)}")
    rows = []
    for rec in reader:
        values = {k.strip(): (v or "").strip() for k, v in rec.items() if k is not None}
        if None in rec:
            values["_extra"] = rec[None]
        if not any(values.get(k) for k in KEYS) or values.get("video", "").startswith("#"):
            continue
        row = _Row(len(rows) + 1, {k: v for k, v in values.items() if v != ""})
        if "_extra" in values:
            row.problems.append(f"more cells than columns ({', '.join(values['_extra'])!r} left over): quote values "
                                "that contain commas")
            row.values.pop("_extra", None)
        rows.append(row)
    return rows


def _yaml_rows(path: Path) -> list[_Row]:
    import yaml

    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from e
    file_defaults = {}
    if isinstance(data, dict):
        unknown = set(data) - {"videos", "defaults"}
        if unknown or "videos" not in data:
            raise ManifestError(f"{path}: a mapping manifest has `videos:` (a list of rows) and optional "
                                f"`defaults:`; found {', '.join(map(str, data))}")
        file_defaults, data = data.get("defaults") or {}, data["videos"]
        if not isinstance(file_defaults, dict):
            raise ManifestError(f"{path}: `defaults:` must be a mapping of options (model, image_size, ...)")
        bad = [k for k in file_defaults if k not in KEYS or k in ("video", "name", "prompts")]
        if bad:
            raise ManifestError(f"{path}: `defaults:` cannot set {', '.join(map(str, bad))}; it sets: model, "
                                "checkpoint, image_size, direction, exports, text, text_frame")
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a list of rows (`- video: a.mp4` / `  prompts: a.json`)")
    rows = []
    for i, item in enumerate(data, 1):
        if isinstance(item, str):
            item = {"video": item}
        if not isinstance(item, dict):
            r = _Row(i, {})
            r.problems.append(f"a row is a mapping (video: ..., prompts: ...), not {type(item).__name__}")
            rows.append(r)
            continue
        r = _Row(i, {**file_defaults, **{str(k): v for k, v in item.items() if v is not None and v != ""}})
        unknown = [k for k in item if k not in KEYS]
        if unknown:
            r.problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}; keys are: {', '.join(KEYS)}")
        rows.append(r)
    return rows


def _folder_rows(folder: Path, defaults: RowDefaults) -> list[_Row]:
    folder = folder.resolve()
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                    and not p.name.startswith("."))
    rows = []
    for i, v in enumerate(videos, 1):
        found = [d / (v.stem + s) for d in (folder, folder / "prompts") for s in PROMPT_SUFFIXES]
        found = [p for p in found if p.is_file()]
        r = _Row(i, {"video": str(v)})
        if len(found) > 1:
            r.problems.append(f"several prompt files for it ({', '.join(p.name for p in found)}): keep one")
        elif found:
            r.values["prompts"] = str(found[0])
        elif not defaults.text:
            r.problems.append(f"no prompt file {v.stem}.json or {v.stem}.yaml beside it (or in prompts/): add one, "
                              "or give --text")
        rows.append(r)
    if not rows:
        raise ManifestError(f"{folder} holds no videos ({', '.join(VIDEO_SUFFIXES)}): give a folder of videos with "
                            "their prompt files, or a CSV/YAML manifest")
    return rows


# -- checking -------------------------------------------------------------------------------------
def _split(value, seps=";") -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    text = str(value)
    for s in seps[1:]:
        text = text.replace(s, seps[0])
    return tuple(t.strip() for t in text.split(seps[0]) if t.strip())


def _normalise(r: _Row, base: Path, d: RowDefaults) -> None:
    from samtrack.io.export import FORMATS

    v, p = r.values, r.problems

    def path_of(key):
        """The row's path option ``key`` resolved against the manifest's folder, or None when empty."""
        if not v.get(key):
            return None
        q = Path(str(v[key])).expanduser()
        return (q if q.is_absolute() else base / q).resolve()

    if not v.get("video"):
        p.append("no video: give the `video` path")
    video = path_of("video")
    if video is not None and not video.exists():
        p.append(f"video {video} not found")
    prompts = path_of("prompts")
    if prompts is not None and not prompts.is_file():
        p.append(f"prompt file {prompts} not found")
    checkpoint = v.get("checkpoint")
    if checkpoint not in (None, "untrained"):
        checkpoint = path_of("checkpoint")
    elif checkpoint is None and d.checkpoint not in (None, "untrained"):
        checkpoint = Path(d.checkpoint).expanduser().resolve()
    elif checkpoint is None:
        checkpoint = d.checkpoint
    if isinstance(checkpoint, Path) and not checkpoint.is_file():
        p.append(f"checkpoint {checkpoint} not found")
    size = v.get("image_size", d.image_size)
    try:
        size = None if size in (None, "") else int(size)
        if size is not None and (size < 64 or size % 16):
            raise ValueError
    except (TypeError, ValueError):
        p.append(f"image_size {size!r}: use a multiple of 16, at least 64 (e.g. 512, 1024)")
        size = None
    direction = str(v.get("direction", d.direction))
    if direction not in ("forward", "backward", "both"):
        p.append(f"direction {direction!r}: use forward, backward or both")
    exports = _split(v["exports"], "; ,") if "exports" in v else tuple(d.exports)
    bad = [e for e in exports if e not in FORMATS]
    if bad:
        p.append(f"export {bad[0]!r}: choose from {', '.join(FORMATS)}")
    text = _split(v["text"]) if "text" in v else tuple(d.text)
    try:
        text_frame = int(v.get("text_frame", d.text_frame))
    except (TypeError, ValueError):
        p.append(f"text_frame {v.get('text_frame')!r}: give a frame number")
        text_frame = 0
    if prompts is None and not text and v.get("video") and not p:
        p.append("nothing to track: give a prompt file (`prompts`), or `text` (SAM3)")
    name = str(v.get("name") or (video.stem if video is not None else ""))
    r.values = {"video": video, "prompts": prompts, "name": name, "model": v.get("model", d.model),
                "checkpoint": None if checkpoint is None else str(checkpoint), "image_size": size,
                "direction": direction, "exports": exports, "text": text, "text_frame": text_frame}


def _check_names(rows: list[_Row], out_dir: Path) -> None:
    seen: dict[str, int] = {}
    for r in rows:
        name = r.values["name"]
        if not name:
            continue
        if "/" in name or "\\" in name or name.startswith(".") or name.startswith("batch-report"):
            r.problems.append(f"name {name!r} cannot be a folder name under {out_dir}: choose another `name`")
        elif name in seen:
            r.problems.append(f"name {name!r} is also row {seen[name]}'s (each video gets the folder "
                              f"{out_dir}/<name>): give one of them another `name`")
        else:
            seen[name] = r.number


def _check_models(rows: list[_Row]) -> None:
    from samtrack.session.checkpoints import resolve_model

    cache: dict = {}
    for r in rows:
        if r.problems:
            continue
        k = (r.values["model"], r.values["checkpoint"])
        if k not in cache:
            try:
                cache[k] = resolve_model(*k)
            except SamtrackError as e:
                cache[k] = e
        if isinstance(cache[k], SamtrackError):
            r.problems.append(str(cache[k]))
            continue
        if r.values["text"] and cache[k].backend != "sam3":
            r.problems.append(f"text prompts need a SAM3 model; {cache[k].name} is {cache[k].family}")


def _open_videos(rows: list[_Row]) -> dict:
    """row number -> VideoInfo, or a string: why the (existing) video cannot be decoded."""
    from samtrack.io.registry import open_reader

    def probe(r: _Row):
        """Open the row's video header (no decoding): its frame count, or the error that names the row."""
        try:
            with open_reader(r.values["video"]) as rd:
                return r, rd.info
        except DAMAGED as e:
            return r, str(e)
        except SamtrackError as e:
            r.problems.append(str(e))
            return r, None

    todo = [r for r in rows if r.values["video"] is not None and r.values["video"].exists()]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(todo)))) as pool:
        return {r.number: info for r, info in pool.map(probe, todo)}


def _check_prompts(r: _Row, info) -> None:
    from samtrack.session.prompt_file import _check_finds, load_prompt_file

    v = r.values
    try:
        if v["prompts"] is not None:
            load_prompt_file(v["prompts"], n_frames=info.n_frames, width=info.width, height=info.height)
        if v["text"]:
            _check_finds([{"frame": v["text_frame"], "text": t} for t in v["text"]], Path("text"), info.n_frames,
                         info.width, info.height)
    except SamtrackError as e:
        note = f" ({'; '.join(info.notes)})" if getattr(info, "notes", None) else ""
        r.problems.append(str(e) + note)


def _sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stat(path) -> list | None:
    if path in (None, "untrained"):
        return path
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _job(r: _Row, out_dir: Path, info, features: bool = False) -> VideoJob:
    v = r.values
    key = {"format": KEY_FORMAT, "video": _stat(v["video"]), "prompts": _sha256(v["prompts"]), "model": v["model"],
           "checkpoint": _stat(v["checkpoint"]), "image_size": v["image_size"], "direction": v["direction"],
           "exports": list(v["exports"]), "text": list(v["text"]), "text_frame": v["text_frame"]}
    return VideoJob(name=v["name"], row=r.number, video=str(v["video"]),
                    prompts=None if v["prompts"] is None else str(v["prompts"]),
                    out_dir=str((out_dir / v["name"]).resolve()), n_frames=getattr(info, "n_frames", 0),
                    model=v["model"], checkpoint=v["checkpoint"], image_size=v["image_size"],
                    direction=v["direction"], exports=tuple(v["exports"]), text=tuple(v["text"]),
                    text_frame=v["text_frame"], features=features,
                    key=hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest())
