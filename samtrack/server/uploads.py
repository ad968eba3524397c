"""Files that cross the server's boundary in bulk: uploads (streamed to disk under a size limit, stored
by content digest) and exports (written into a temporary folder, answered as a zip)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from samtrack.errors import InvalidOptionError, UploadTooLargeError

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_name(name: str) -> str:
    """The base name of ``name`` with characters other than letters, digits and ``._+-`` replaced by ``_``.
    Raises :class:`InvalidOptionError` for a name with nothing left (``""``, ``.``, ``..``)."""
    base = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")
    if not base.strip("_"):
        raise InvalidOptionError(f"upload name {name!r}: give a file name such as clip.mp4 (its extension "
                                 "tells which reader opens it)")
    return base[:200]


def _too_large(limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the upload is larger than the server's limit of {limit / 2**20:.1f} MiB "
                               "(samtrack serve --max-upload-mb); put the file under one of the server's roots "
                               "instead and name it by its path")


async def store_upload(request, name: str, folder: Path, limit: int) -> Path:
    """Stream ``request``'s body to ``folder/<sha256[:16]>/<name>`` and return that path. Refused with
    :class:`UploadTooLargeError` up front when Content-Length says it is over ``limit`` bytes, and as
    soon as the received size passes it (the partial file is removed). The same content under the same
    name is kept once."""
    from starlette.concurrency import run_in_threadpool

    name = safe_name(name)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    tmpdir = folder / "incoming"
    tmpdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmpdir, suffix=".part")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                digest.update(chunk)
                await run_in_threadpool(f.write, chunk)
        if size == 0:
            raise InvalidOptionError(f"upload {name!r} is empty: send the video file's bytes as the request body")
        final = folder / digest.hexdigest()[:16] / name
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.is_file() and final.stat().st_size == size:
            os.unlink(tmp)  # the same upload again: the stored copy (and its frame cache) is reused
        else:
            os.replace(tmp, final)
        log.info("upload %s: %d bytes -> %s", name, size, final)
        return final
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def export_zip(session, fmt: str, folder: Path, *, allow_incomplete: bool = False,
               options: dict | None = None) -> tuple[Path, dict, Callable[[], None]]:
    """Export ``session``'s results as ``fmt`` into a temporary folder under ``folder`` and zip them.

    Returns (zip path, report dict for the ``X-Samtrack-Export`` header, cleanup function that removes
    the temporary folder). Raises the session's :class:`~samtrack.io.export.ExportError`."""
    from samtrack.io.export import default_name

    options = dict(options or {})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder))
    try:
        out = tmp / "out" / default_name(fmt)
        out.parent.mkdir()
        if options.pop("frames_dir", None) or options.pop("write_frames", None):
            options["frames_dir"] = out.parent  # never a client's path: the frames go into the zip
        report = session.export(fmt, out, allow_incomplete=allow_incomplete, **options)
        path = tmp / "export.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for p in sorted(out.parent.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(out.parent).as_posix())
        rep = {"format": report.format, "frames": int(report.frames), "objects": int(report.objects),
               "hidden": {str(k): list(map(int, v)) for k, v in report.hidden.items()},
               "warnings": list(report.warnings), "name": out.name}
        json.dumps(rep)
        return path, rep, lambda: shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
