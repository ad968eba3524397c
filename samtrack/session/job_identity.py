"""A work folder's results and memory are signed by the job that computed them.

The signature is :func:`samtrack.session.job_signature` (source identity, reader
options, model, checkpoint hash, image size); it is written into the attributes
of ``results.zarr`` and ``memory.zarr``. Opening a folder signed by another job
never serves its results: :class:`JobMismatchError`, or with ``reset`` the two
stores are removed first (the frame cache checks its own signature).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from samtrack.errors import JobMismatchError
from samtrack.io.identity import describe_differences, differences

log = logging.getLogger(__name__)
STORES = ("results.zarr", "memory.zarr")


def stored_signatures(workdir: Path) -> dict[str, dict | None]:
    """{store name: its signature, or None when it has none}, for the stores that exist."""
    import zarr

    out = {}
    for name in STORES:
        p = Path(workdir) / name
        if p.exists():
            try:
                out[name] = dict(zarr.open_group(p, mode="r").attrs).get("signature")
            except Exception as e:  # unreadable metadata: never trust it
                log.warning("%s unreadable (%s)", p, e)
                out[name] = {"unreadable": str(e)}
    return out


def check_job(workdir: Path, signature: dict, *, reset: bool = False) -> None:
    """Raise :class:`JobMismatchError` when ``workdir`` holds another job's results or memory
    (with ``reset``: remove them). A store without a signature is an unfinished start: kept."""
    found = {n: s for n, s in stored_signatures(workdir).items() if s is not None}
    diffs = sorted({k for s in found.values() for k in differences(s, signature)})
    if not diffs:
        return
    if reset:
        log.warning("%s held another job (%s): its results and memory are discarded", workdir, ", ".join(diffs))
        for name in STORES:
            shutil.rmtree(Path(workdir) / name, ignore_errors=True)
        return
    old = next(iter(found.values()))
    legacy = isinstance(old.get("source"), str)
    what = ("they were made by an older samtrack that did not record the video's content"
            if legacy else describe_differences(diffs, old, signature))
    raise JobMismatchError(
        f"{workdir} holds results of another job: {what}. They are not used for this one; open another "
        "workdir, or pass reset=True to discard them", differences=diffs)


def sign_job(workdir: Path, signature: dict) -> None:
    """Write ``signature`` into both stores (after :func:`check_job` passed)."""
    import zarr

    for name in STORES:
        p = Path(workdir) / name
        g = zarr.open_group(p, mode="a")
        if g.attrs.get("signature") != signature:
            g.attrs["signature"] = signature
