"""Load a YAML preset (``configs/*.yaml``) into session options and reader options."""
from __future__ import annotations

from pathlib import Path

from samtrack.errors import InvalidOptionError
from samtrack.session.types import SessionConfig

_VIDEO_KEYS = {"z", "channels", "time_axis", "reader", "intensity", "axes", "fps"}


def load_config(path) -> tuple[SessionConfig, dict]:
    """(SessionConfig, video options) from a YAML file; unknown keys are errors that name them."""
    import dataclasses

    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InvalidOptionError(f"{p}: cannot read the config ({e})") from e
    unknown = set(data) - {"session", "video"}
    if unknown:
        raise InvalidOptionError(f"{p}: unknown section(s) {sorted(unknown)}; use 'session' and 'video'")
    sess = data.get("session") or {}
    fields = {f.name for f in dataclasses.fields(SessionConfig)}
    bad = set(sess) - fields
    if bad:
        raise InvalidOptionError(f"{p}: unknown session option(s) {sorted(bad)}; known: {sorted(fields)}")
    video = data.get("video") or {}
    bad = set(video) - _VIDEO_KEYS
    if bad:
        raise InvalidOptionError(f"{p}: unknown video option(s) {sorted(bad)}; known: {sorted(_VIDEO_KEYS)}")
    return SessionConfig(**sess), dict(video)
