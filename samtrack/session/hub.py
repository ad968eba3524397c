"""Model files from the Hugging Face hub (or a hub mirror), through ``huggingface_hub``.

``huggingface_hub`` does the work: its cache layout (``models--<org>--<name>/blobs`` named by
the file's hash, ``snapshots/<commit>/<file>`` links), a file lock per blob so several
processes downloading the same file at once end with one file and one download, and
downloads that pick up where a dropped connection left them (an HTTP ``Range`` request,
retried while bytes keep arriving). This module adds what samtrack needs around it:

- one fast probe first (a single HEAD, ``timeout`` seconds, no retries), so an offline
  machine fails in seconds instead of after the library's minute of retries;
- the hub's answers turned into :class:`~samtrack.errors.CheckpointError` messages that say
  what to do (a gated model: the model page, accept the licence, a token);
- the file checked against the hash the hub gives (an LFS file's ETag is its sha256; a small
  file's is its git blob sha1), which the library checks only by size;
- a ``progress(done_bytes, total_bytes)`` callback instead of the library's tqdm bars
  (library code never prints).

Where: ``endpoint`` argument, else ``$SAMTRACK_MIRROR`` (a lab's hub mirror), else
``$HF_ENDPOINT``, else ``https://huggingface.co``; read at each call, so a test or a user can
set them after import. Token: ``token`` argument, else what ``huggingface_hub`` finds
(``$HF_TOKEN``, then the token ``hf auth login`` stored).

Resuming: a dropped connection is resumed within one call. A download interrupted by the
user (Ctrl-C) or a crash starts again next time: ``huggingface_hub`` >= 1.0 writes each
download to a file of its own and removes it on failure (so a broken file lock can never
mix two downloads).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Callable

from samtrack.errors import CheckpointError

log = logging.getLogger(__name__)

HUB = "https://huggingface.co"
TOKENS_PAGE = f"{HUB}/settings/tokens"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def endpoint_url(endpoint: str | None = None) -> str:
    """The hub to download from: ``endpoint``, else ``$SAMTRACK_MIRROR``, else ``$HF_ENDPOINT``, else
    ``https://huggingface.co`` (no trailing slash)."""
    ep = endpoint or os.environ.get("SAMTRACK_MIRROR") or os.environ.get("HF_ENDPOINT") or HUB
    return ep.rstrip("/")


def file_url(repo_id: str, filename: str, *, endpoint: str | None = None, revision: str = "main") -> str:
    """``<endpoint>/<repo_id>/resolve/<revision>/<filename>``: where the hub serves a file."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint_url(endpoint))


def user_cache_dir() -> Path:
    """The user's own Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), where other tools (the ``sam3`` package) put the same files.
    Read at each call (``huggingface_hub`` reads it once at import)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_file(repo_id: str, filename: str, cache_dir: str | os.PathLike, *, revision: str = "main") -> Path | None:
    """The file of ``repo_id`` at ``revision`` in the hub cache ``cache_dir``, or None. Local only."""
    from huggingface_hub import try_to_load_from_cache

    if not Path(cache_dir).is_dir():
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def download_file(repo_id: str, filename: str, *, cache_dir: str | os.PathLike, token: str | None = None,
                  endpoint: str | None = None, revision: str = "main", timeout: float = 5.0,
                  progress: Callable[[int, int], None] | None = None, gated: bool = False,
                  expected_sha256: str | None = None, how_to_get: str = "") -> Path:
    """Download ``filename`` of the model repository ``repo_id`` into the hub cache ``cache_dir``
    (or find it there) and return its path (``snapshots/<commit>/<filename>``).

    ``timeout``: seconds for the probe and for the hub's metadata request, so an unreachable hub
    fails in about that long. ``progress(done, total)``: bytes, called as data arrives.
    ``gated``: the repository needs accepted access (words of the refusal message).
    ``expected_sha256``: also required of the file (besides the hub's own hash).
    ``how_to_get``: appended to the message when the hub cannot be reached.

    Raises :class:`CheckpointError`: the hub refused (401/403: what to do for access), the
    repository or file is not there (404), the hub cannot be reached (offline: ``how_to_get``),
    or the file's hash does not match (the file is removed)."""
    import huggingface_hub as hh

    ep = endpoint_url(endpoint)
    cache_dir = Path(cache_dir)
    url = file_url(repo_id, filename, endpoint=ep, revision=revision)
    had = cached_file(repo_id, filename, cache_dir, revision=revision)
    if had is not None:
        return had
    try:
        meta = hh.get_hf_file_metadata(url, token=token, timeout=timeout, endpoint=ep)
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = Path(hh.hf_hub_download(repo_id, filename, revision=revision, cache_dir=str(cache_dir), token=token,
                                       endpoint=ep, etag_timeout=timeout, tqdm_class=_progress_class(progress)))
    except (OSError, *_network_errors()) as e:  # the hub's errors are OSErrors; httpx's are not
        raise _explain(e, repo_id, filename, ep, gated=gated, how_to_get=how_to_get) from e
    _verify(path, meta.etag, expected_sha256, filename)
    return path


# -- refusals and failures in words ---------------------------------------------------------
def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


def _network_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod, name in (("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            errs.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def _explain(e: Exception, repo_id: str, filename: str, endpoint: str, *, gated: bool,
             how_to_get: str) -> CheckpointError:
    """A hub or network failure as a CheckpointError that says what to do."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled

    page = f"{HUB}/{repo_id}"
    status = _status(e)
    what = f"{filename} of {repo_id}"
    if status in (401, 403) or isinstance(e, GatedRepoError):
        why = (f"HTTP {status}: not logged in, or the token is not valid" if status == 401
               else f"HTTP {status}: this account has not been granted access")
        steps = (f"To get access: open {page} while logged in to Hugging Face and accept the licence (access may "
                 f"need a review), create a read token at {TOKENS_PAGE}, then set the environment variable "
                 "HF_TOKEN=YOUR_TOKEN or pass token=YOUR_TOKEN")
        kind = "is in a gated repository" if gated or isinstance(e, GatedRepoError) else "needs an access token"
        return CheckpointError(f"{endpoint} refused the download of {what} ({why}): the model {kind}. {steps}.")
    if status == 404:
        return CheckpointError(f"{endpoint} has no {what} (HTTP 404): check the model name; a mirror "
                               "($SAMTRACK_MIRROR / $HF_ENDPOINT) may not hold this model")
    if isinstance(e, (OfflineModeIsEnabled, LocalEntryNotFoundError, *_network_errors())) or status is None:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        offline = " (HF_HUB_OFFLINE is set)" if isinstance(e, OfflineModeIsEnabled) else ""
        return CheckpointError(f"cannot download {what} from {endpoint}{offline} ({reason}); {how_to_get}".rstrip("; "))
    return CheckpointError(f"{endpoint} answered HTTP {status} for {what}; try again later, or {how_to_get}"
                           .rstrip(", or "))


# -- verification ---------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """Hex git blob id of a file (``sha1("blob <size>\\0" + content)``): a non-LFS file's ETag on the hub."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, etag: str | None, expected_sha256: str | None, filename: str) -> None:
    """Check a fresh download against the hub's hash (and ``expected_sha256``); remove it on a mismatch."""
    blob = path.resolve()
    etag = (etag or "").strip('"').removeprefix("W/").strip('"').lower()
    checks = []
    if _SHA256.fullmatch(etag):
        checks.append(("sha256 (the hub's ETag)", etag, sha256_file))
    elif _SHA1.fullmatch(etag):
        checks.append(("git blob sha1 (the hub's ETag)", etag, git_blob_sha1))
    else:
        log.warning("%s: the hub gave no hash to check the download against (ETag %r); only its size was checked",
                    filename, etag)
    if expected_sha256 and expected_sha256 != etag:
        checks.append(("sha256 (the registry's)", expected_sha256, sha256_file))
    for what, want, fn in checks:
        got = fn(blob)
        if got != want:
            blob.unlink(missing_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink(missing_ok=True)
            raise CheckpointError(f"the download of {filename} does not match its {what}: got {got}, expected "
                                  f"{want}; the file was removed, download it again")
        log.info("%s: %s verified", filename, what)


# -- progress -------------------------------------------------------------------------------
class _Bar:
    """The part of tqdm's interface ``huggingface_hub`` uses, forwarding bytes to a callback."""

    callback: Callable[[int, int], None] | None = None

    def __init__(self, *args, total: int | None = None, initial: int = 0, **kw):
        self.total, self.n = total, initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.callback is not None:
            type(self).callback(self.n, int(self.total or 0))

    def update_transfer(self, n: int = 1) -> None:  # network bytes of a Xet download (counted by update)
        pass

    def set_postfix_str(self, *a, **k) -> None:
        pass

    set_transfer_postfix_str = set_postfix_str
    set_description = set_postfix_str
    refresh = set_postfix_str

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _progress_class(progress: Callable[[int, int], None] | None) -> type:
    return type("_ProgressBar", (_Bar,), {"callback": staticmethod(progress) if progress else None})
