"""`make demo`: the main job end to end on a video samtrack generates itself.

Builds the frame cache, tracks the prompted objects both ways, exports an
overlay mp4 and a label TIFF, and prints where they are. Uses a real
checkpoint when one is found or can be downloaded; otherwise runs untrained
weights under a banner (the masks are then meaningless: only the pipeline is
exercised). ``--video`` and ``--prompts`` run it on your own data.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np


def make_sample(out: Path, n: int = 90, w: int = 320, h: int = 240) -> tuple[Path, Path]:
    """Two bright 'cells' drifting over a textured background, and a prompt file for them."""
    import av

    video, prompts = out / "sample.mp4", out / "sample_prompts.json"
    if video.exists() and prompts.exists():
        return video, prompts
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    bg = (60 + 25 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 6, (h, w))).clip(0, 255)
    c = av.open(str(video), "w")
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    centers = []
    for t in range(n):
        img = np.repeat(bg[..., None], 3, axis=2).copy()
        cs = [(60 + 1.5 * t, 80 + 20 * np.sin(t / 15)), (250 - 1.2 * t, 170 - 0.5 * t)]
        centers.append(cs)
        for k, (cx, cy) in enumerate(cs):
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (14 + 4 * k) ** 2))
            col = np.array([(230, 90, 80), (90, 200, 120)][k], float)
            img = img * (1 - blob[..., None]) + col * blob[..., None]
        for p in s.encode(av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    (a, b) = centers[0]
    spec = {"objects": [
        {"id": 1, "name": "red cell", "prompts": [{"frame": 0, "points": [[round(a[0]), round(a[1])]], "labels": [1]}]},
        {"id": 2, "name": "green cell", "prompts": [{"frame": 0, "box": [round(b[0]) - 22, round(b[1]) - 22,
                                                                          round(b[0]) + 22, round(b[1]) + 22]}]}]}
    prompts.write_text(json.dumps(spec, indent=2))
    return video, prompts


BANNER = """
+--------------------------------------------------------------------------+
|  NO CHECKPOINT FOUND: running UNTRAINED random weights.                  |
|  The masks are meaningless; only the pipeline is being exercised.       |
|  Get real weights: `samtrack models download sam2.1_hiera_tiny`, or    |
|  put sam2.1_hiera_tiny.pt in ~/.cache/samtrack/checkpoints/            |
+--------------------------------------------------------------------------+
"""


def main(argv=None) -> int:
    """``make demo``: cache, track and export a generated sample (or --video with --prompts); returns the
    exit status (0, or 2 with one error line)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video")
    ap.add_argument("--prompts")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--model", default="sam2.1_hiera_tiny")
    ap.add_argument("--image-size", type=int, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rich.console import Console

    from samtrack.cli import cli_words
    from samtrack.errors import CheckpointError, SamtrackError
    from samtrack.job import run_track
    from samtrack.progress import progress_bar
    from samtrack.session import resolve_checkpoint
    from samtrack.session.models import get_model

    con = Console(stderr=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if bool(a.video) != bool(a.prompts):
        con.print("[red]give both VIDEO=... and PROMPTS=...[/red]")
        return 2
    video, prompts = (Path(a.video), Path(a.prompts)) if a.video else make_sample(out)
    try:
        import samtrack

        with samtrack.open_video(video, workdir=out / "job") as fs:
            i = fs.info
            con.print(f"video {video}: {i.n_frames} frames, {i.width}x{i.height}, {i.fps} fps, reader {i.reader}")
            with progress_bar("frame cache", unit="frames") as update:
                fs.build(progress=update)
        spec = get_model(a.model)
        try:
            ckpt = resolve_checkpoint(spec, None, download=True)
            image_size = a.image_size
        except CheckpointError as e:
            con.print(f"[yellow]{cli_words(str(e))}[/yellow]", highlight=False)
            con.print(f"[bold red]{BANNER}[/bold red]")
            ckpt, image_size = "untrained", a.image_size or 256
        with progress_bar("tracking", unit="frames", show_memory=True) as update:
            session = run_track(video, prompts, out / "job", model=a.model, checkpoint=ckpt, image_size=image_size,
                                direction="both", force=True, progress=update)
        try:
            from samtrack.io.export import export

            paths = []
            for fmt, name in (("mp4", "overlay.mp4"), ("tiff", "labels.tif")):
                with progress_bar(f"export {fmt}", unit="frames") as update:
                    paths.append(export(session.results, fmt, out / name, force=True, frames=session.frames,
                                        progress=update).path)
        finally:
            session.close()
    except SamtrackError as e:
        con.print(f"[bold red]error:[/bold red] {cli_words(str(e))}", highlight=False)
        return 2
    con.print("[bold green]done[/bold green]: " + ", ".join(str(p) for p in paths) + f" (job: {out / 'job'})")
    if ckpt == "untrained":
        con.print("[yellow]reminder: untrained weights, the masks are meaningless[/yellow]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
