"""Typed errors. Every message says what went wrong and what to do next.

Specific errors also inherit the matching builtin, so callers can catch either
(``except KeyError`` still catches :class:`UnknownObjectError`).
"""
from __future__ import annotations


class SamtrackError(Exception):
    """Base class of every error samtrack raises on purpose."""


# --- sources and decoding -------------------------------------------------
class UnsupportedSourceError(SamtrackError, ValueError):
    """No reader can open the source; the message says what to install or convert."""


class SourceNotFoundError(SamtrackError, FileNotFoundError):
    """The source path does not exist."""


class CorruptSourceError(SamtrackError, OSError):
    """The file is damaged. ``usable_frames`` is how many frames decode, or 0."""

    def __init__(self, message: str, *, usable_frames: int = 0):
        super().__init__(message)
        self.usable_frames = usable_frames


class EmptySourceError(SamtrackError, ValueError):
    """A folder or stack with no frames in it."""


class MixedFrameSizeError(SamtrackError, ValueError):
    """Frames of one source have different sizes; ``path`` names the first odd one."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class AmbiguousAxesError(SamtrackError, ValueError):
    """A stack's axes leave a choice (Z plane, channels) that the user must make."""


class FrameIndexError(SamtrackError, IndexError):
    """A frame index outside ``0 .. n_frames - 1``."""


class DecodeError(SamtrackError, RuntimeError):
    """A frame could not be decoded; ``frame`` is its index."""

    def __init__(self, message: str, *, frame: int):
        super().__init__(message)
        self.frame = frame


class CacheError(SamtrackError, RuntimeError):
    """The frame cache or result store on disk cannot be used."""


class JobMismatchError(CacheError):
    """A work folder holds results of another job (another video or content, model, checkpoint,
    image size or reader options). ``differences``: the signature keys that differ."""

    def __init__(self, message: str, *, differences: list[str] | None = None):
        super().__init__(message)
        self.differences = differences or []


class InvalidOptionError(SamtrackError, ValueError):
    """An option value outside its allowed range."""


# --- models and sessions ----------------------------------------------------
class UnknownModelError(SamtrackError, KeyError):
    """A model name not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CheckpointError(SamtrackError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the chosen model."""


class PromptError(SamtrackError, ValueError):
    """A prompt outside the frame, a malformed box or mask, or bad labels."""


class UnknownObjectError(SamtrackError, KeyError):
    """An object id that the session does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoPromptsError(SamtrackError, RuntimeError):
    """Propagation asked for before any prompt was given."""


class UnreachableFramesError(SamtrackError, ValueError):
    """Frames asked for that no pass in the asked direction can reach (no keyframe on that side).

    ``frames``: {object id: frame indices}."""

    def __init__(self, message: str, *, frames: dict | None = None):
        super().__init__(message)
        self.frames = frames or {}


class OutOfMemoryError(SamtrackError, MemoryError):
    """The device or host ran out of memory; the message names the budget to lower."""


class SessionClosedError(SamtrackError, RuntimeError):
    """A session used after :meth:`close`."""


class CancelledError(SamtrackError, RuntimeError):
    """Propagation was cancelled; every frame finished before the cancel is stored."""


class SessionBusyError(SamtrackError, RuntimeError):
    """The session is propagating: wait for it, or cancel it, before changing its prompts."""


class SessionInUseError(SamtrackError, RuntimeError):
    """The session folder is open in another session (another process, e.g. a ``samtrack track`` still
    running, or this one): two writers would overwrite each other's prompts and results. ``holder``: what
    the holder recorded (pid, host, command, since: epoch s), ``{}`` when unknown."""

    def __init__(self, message: str, *, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}


# --- remote sessions (samtrack serve / samtrack.connect) -----------------------------------
class RemoteError(SamtrackError):
    """A failure between a client and a ``samtrack serve`` server (not one of the session's own errors,
    which arrive as their own class)."""


class AuthenticationError(RemoteError, PermissionError):
    """HTTP 401: no token, or not the server's token (``samtrack serve --token-file``)."""


class ForbiddenPathError(RemoteError, PermissionError):
    """HTTP 403: a path outside the server's roots (``..``, an absolute path elsewhere, a symlink leading out)."""


class UploadTooLargeError(RemoteError, ValueError):
    """HTTP 413: an upload over the server's limit (``samtrack serve --max-upload-mb``)."""


class RateLimitedError(RemoteError):
    """HTTP 429: too many requests; wait and retry (``samtrack serve --rate-limit``)."""


class ServerUnavailableError(RemoteError, ConnectionError):
    """The server cannot be reached (not running, wrong URL, or restarting): the message says where it
    was looked for and for how long."""
