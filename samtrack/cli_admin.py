"""``samtrack models`` and ``samtrack caches``: what is here, downloads, the default model, cache clean-up.

Registered on the main command in :mod:`samtrack.cli` (which handles errors: a SamtrackError is one line).
"""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from samtrack.errors import InvalidOptionError

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 250)  # piped output: tables are not cut to 80 columns


models_app = typer.Typer(help="Supported models: what is here, download, the default.", invoke_without_command=True)


def _memory(row, dtype: str) -> str:
    m = (row.memory or {}).get(dtype)
    return _size(m["peak_rss_bytes"]) if m else "not measured"


@models_app.callback()
def models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List models: family, size, parameters, checkpoint file, present or not (and where), size on disk,
    memory measured by bench/model_memory.py (fp32, bf16), the default (*)."""
    if ctx.invoked_subcommand is not None:
        return
    from samtrack.session.checkpoints import checkpoint_dirs
    from samtrack.session.models import model_table, settings_path

    rows = model_table()
    if as_json:
        out.print_json(json.dumps([r.to_dict() for r in rows]))
        return
    from rich.table import Table

    t = Table("model", "family", "size", "params", "checkpoint", "present", "on disk", "memory fp32", "memory bf16")
    for r in rows:
        s = r.spec
        name = f"{s.name} *" if r.default else s.name
        where = f"[green]yes[/green] {escape(str(r.path))}" if r.present else ("no (gated)" if s.gated else "no")
        t.add_row(name, s.family, s.size, f"{s.params_m:.1f}M", s.checkpoint, where,
                  _size(r.disk_bytes) if r.disk_bytes is not None else "-", _memory(r, "fp32"), _memory(r, "bf16"))
    out.print(t)
    stored = f"stored in {settings_path()}; " if settings_path().is_file() else ""
    out.print(f"* default model ({stored}change it with `samtrack models default NAME`)", highlight=False)
    out.print(f"searched: {', '.join(map(str, checkpoint_dirs()))}, and the Hugging Face cache", highlight=False)
    out.print("memory: peak RSS building the model on the CPU and encoding one frame at its input size "
              "(bench/model_memory.py; bf16 = fp32 weights, bf16 autocast as on CUDA)", highlight=False)
    for r in rows:
        if r.spec.gated and not r.present:
            out.print(f"{r.spec.name} is gated: accept its licence at {r.spec.model_page} while logged in, then "
                      f"`samtrack models download {r.spec.name} --token YOUR_TOKEN` (or set HF_TOKEN)",
                      highlight=False)


@models_app.command("download")
def models_download(name: str = typer.Argument(..., help="model name (see `samtrack models`)"),
                    token: Optional[str] = typer.Option(None, "--token", help="Hugging Face token (default: "
                                                        "$HF_TOKEN or the stored `hf auth login`); gated models "
                                                        "(sam3) need one whose account accepted the licence")) -> None:
    """Download a model's checkpoint from the Hugging Face hub ($SAMTRACK_MIRROR or $HF_ENDPOINT for a mirror):
    verified against the hub's sha256, a dropped connection resumed, safe to run twice at once."""
    from samtrack.progress import progress_bar
    from samtrack.session.checkpoints import download_checkpoint, find_checkpoint
    from samtrack.session.models import get_model

    spec = get_model(name)
    have = find_checkpoint(spec)
    if have is not None:
        console.print(f"{spec.name} is already here: {have}", highlight=False)
        return
    with progress_bar(f"download {spec.checkpoint}", unit="bytes") as update:
        path = download_checkpoint(spec, progress=update, token=token)
    console.print(f"saved {path}", highlight=False)


@models_app.command("default")
def models_default(name: Optional[str] = typer.Argument(None, help="model name (see `samtrack models`); "
                                                        "without it, print the current default")) -> None:
    """Set the model used when a command or open_session names none (stored under $SAMTRACK_CACHE_DIR)."""
    from samtrack.session.checkpoints import find_checkpoint
    from samtrack.session.models import default_model, set_default_model, settings_path

    if name is None:
        out.print(default_model(), highlight=False)
        return
    spec = set_default_model(name)
    console.print(f"default model: {spec.name} (stored in {settings_path()})", highlight=False)
    if find_checkpoint(spec) is None:
        console.print(f"[yellow]its checkpoint is not here yet: run `samtrack models download {spec.name}`[/yellow]",
                      highlight=False)


caches_app = typer.Typer(help="samtrack's caches under ~/.cache/samtrack ($SAMTRACK_CACHE_DIR): list and remove.",
                         invoke_without_command=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@caches_app.callback()
def caches(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List frame caches, default session folders and downloaded checkpoints, largest first."""
    if ctx.invoked_subcommand is not None:
        return
    import datetime

    from samtrack.caches import default_cache_root, list_caches

    entries = list_caches()
    if as_json:
        out.print_json(json.dumps([e.to_dict() for e in entries]))
        return
    from rich.table import Table

    t = Table("kind", "size", "last used", "source", "path")
    for e in entries:
        t.add_row(e.kind, _size(e.bytes), datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M"),
                  e.source or "", str(e.path))
    out.print(t)
    out.print(f"{len(entries)} entries, {_size(sum(e.bytes for e in entries))} in {default_cache_root()}; "
              "remove with `samtrack caches clean`")


@caches_app.command("clean")
def caches_clean(older_than: Optional[float] = typer.Option(None, "--older-than", help="only entries unused for "
                                                                                        "this many days"),
                 missing_source: bool = typer.Option(False, "--missing-source", help="only caches whose video no "
                                                                                     "longer exists"),
                 all_: bool = typer.Option(False, "--all", help="every frame cache and default session folder"),
                 checkpoints: bool = typer.Option(False, "--checkpoints", help="downloaded checkpoints too"),
                 dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed")) -> None:
    """Remove frame caches and default session folders (sessions lose their prompts and masks)."""
    from samtrack.caches import list_caches, remove, select

    if older_than is None and not missing_source and not all_:
        raise InvalidOptionError("say what to remove: --older-than DAYS, --missing-source or --all")
    if older_than is not None and older_than < 0:
        raise InvalidOptionError(f"--older-than {older_than:g}: give a number of days, 0 or more")
    kinds = ("frames", "sessions", "checkpoints") if checkpoints else ("frames", "sessions")
    chosen = select(list_caches(), kinds=kinds, older_than_days=older_than, missing_source=missing_source)
    if dry_run:
        for e in chosen:
            console.print(f"would remove {e.kind} {e.path} ({_size(e.bytes)})", highlight=False)
        console.print(f"would free {_size(sum(e.bytes for e in chosen))} ({len(chosen)} entries)")
        return
    freed, in_use = remove(chosen)
    for e in chosen:
        if e in in_use:
            console.print(f"[yellow]kept {e.kind} {e.path}: a session has it open (close it, then clean again)"
                          "[/yellow]", highlight=False)
        else:
            console.print(f"removed {e.kind} {e.path} ({_size(e.bytes)})", highlight=False)
    console.print(f"freed {_size(freed)} ({len(chosen) - len(in_use)} entries)")
