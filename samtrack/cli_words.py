"""Library messages in CLI words, and the click exceptions a usage mistake raises.

Library errors name Python keywords (``force=True``, ``z=0..4``); the CLI prints them with its
options (``--force``, ``--z 0..4``) through :func:`cli_words`.
"""
from __future__ import annotations

import re

import typer

_OPTIONS = {"force": "--force", "reset": "--force", "allow_incomplete": "--allow-incomplete",
            "checkpoint": "--checkpoint", "model": "--model", "image_size": "--image-size", "device": "--device",
            "z": "--z", "channels": "--channel", "time_axis": "--time-axis", "stream": "--stream",
            "reader": "--reader", "direction": "--direction", "workdir": "--workdir/--out", "token": "--token"}
_KW = re.compile(r"\b(" + "|".join(sorted(_OPTIONS, key=len, reverse=True)) + r")=(\[[^\]]*\]|'[^']*'|\"[^\"]*\"|[^\s,;)]+)")


def cli_words(message: str) -> str:
    """A library message with Python keywords turned into CLI options: ``force=True`` -> ``--force``,
    ``z=0..4`` -> ``--z 0..4``, ``checkpoint='untrained'`` -> ``--checkpoint untrained``,
    ``channels=[i, ...]`` -> ``--channel I`` (repeatable)."""
    def sub(m: re.Match) -> str:
        """One ``keyword=value`` match as its CLI option."""
        opt, val = _OPTIONS[m.group(1)], m.group(2)
        if val == "True":
            return opt
        if m.group(1) == "channels":
            vals = [v.strip() for v in val.strip("[]").split(",") if v.strip()]
            if all(v.isdigit() for v in vals) and vals:
                return " ".join(f"{opt} {v}" for v in vals)
            return f"{opt} N (repeatable)"
        return f"{opt} {val.strip(chr(39) + chr(34))}"

    text = _KW.sub(sub, message)
    return re.sub(r"(--[a-z-]+) \(\1\)", r"\1", text)  # "--force (--force)" from messages that gave both


def click_errors():
    """(usage errors, aborts, exits) of click and of the click that typer bundles (typer >= 0.20)."""
    import click

    usage, abort, exits = [click.exceptions.ClickException], [click.exceptions.Abort, typer.Abort], \
        [click.exceptions.Exit, typer.Exit]
    try:
        import typer._click.exceptions as tclick

        usage.append(tclick.ClickException)
    except ImportError:
        pass
    return tuple(usage), tuple(abort), tuple(exits)
