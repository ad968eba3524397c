"""Evaluation: DAVIS J&F per object, and Cell Tracking Challenge SEG/TRA (py-ctcmetrics).

A samtrack job folder (with ``results.zarr``) is read with overlaps flattened as
the label exports do (smaller object on top); against a CTC ground truth it is
exported to a temporary CTC folder first. Nothing here prints: py-ctcmetrics'
own output and warnings are captured into the result (``problems``).

J is region similarity (IoU); F the boundary F-measure: boundaries are one
pixel thick, matched within ``ceil(0.008 * image diagonal)`` pixels (DAVIS
definitions). Both empty counts 1, one empty 0. Means are over all frames
(``skip_first_last`` for the DAVIS challenge protocol).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from samtrack.errors import SamtrackError, UnsupportedSourceError


class EvaluationError(SamtrackError, ValueError):
    """Prediction and ground truth cannot be compared; the message says why."""


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """DAVIS region similarity J: intersection over union of two (H, W) bool masks; 1.0 when both are
    empty (Perazzi et al., CVPR 2016, as the DAVIS toolkit computes it)."""
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map as DAVIS's seg2bmap: pixels whose right, bottom or bottom-right neighbour differs."""
    m = mask.astype(bool)
    e = np.zeros_like(m)
    s = np.zeros_like(m)
    se = np.zeros_like(m)
    e[:, :-1] = m[:, 1:]
    s[:-1, :] = m[1:, :]
    se[:-1, :-1] = m[1:, 1:]
    b = m ^ e | m ^ s | m ^ se
    b[-1, :] = m[-1, :] ^ e[-1, :]
    b[:, -1] = m[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS contour accuracy F of two (H, W) bool masks: boundary precision/recall within a tolerance of
    ``bound_th`` x the image diagonal (pixels), as the DAVIS 2017 toolkit's ``f_measure``."""
    import cv2

    h, w = gt.shape
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    fb, gb = boundary(pred), boundary(gt)
    nf, ng = fb.sum(), gb.sum()
    if nf == 0 and ng == 0:
        return 1.0
    if nf == 0 or ng == 0:
        return 0.0
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    gd = cv2.dilate(gb.astype(np.uint8), disk).astype(bool)
    fd = cv2.dilate(fb.astype(np.uint8), disk).astype(bool)
    precision = (fb & gd).sum() / nf
    recall = (gb & fd).sum() / ng
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def read_label_source(path) -> tuple[int, Callable[[int], np.ndarray]]:
    """(n_frames, frame -> (H, W) labels) for a palette-PNG folder, a job dir / results.zarr, or a label zarr."""
    p = Path(path)
    if (p / "results.zarr").exists() or p.name == "results.zarr":
        from samtrack.io.export.labels import label_frame
        from samtrack.job import open_results

        store, _ = open_results(p if p.name != "results.zarr" else p.parent)
        return store.n_frames, lambda t: label_frame(store, t)
    if (p / "labels").exists() and ((p / "zarr.json").exists() or (p / ".zgroup").exists()):
        import zarr

        arr = zarr.open_group(p, mode="r")["labels"]
        return arr.shape[0], lambda t: np.asarray(arr[t])
    if p.is_dir():
        from PIL import Image

        from samtrack.io.readers.image_folder import list_images

        files = [f for f in list_images(p) if f.suffix.lower() == ".png"]
        if not files:
            hint = ""
            if p.name in ("TRA", "SEG") and p.parent.name.endswith("_GT"):
                hint = f"; for Cell Tracking Challenge ground truth pass the {p.parent.name} folder itself"
            elif list(p.glob("man_track*.tif")) or list(p.glob("mask*.tif")):
                hint = "; this looks like a CTC folder: pass the ..._GT folder (with TRA/ and SEG/) as ground truth"
            raise UnsupportedSourceError(f"{p}: no PNG label images (DAVIS style), results.zarr or label zarr here{hint}")
        return len(files), lambda t: np.asarray(Image.open(files[t]))
    raise UnsupportedSourceError(f"{p}: give a folder of palette PNGs, a samtrack job directory or a label zarr")


def davis_jf(pred, gt, *, skip_first_last: bool = False, progress=None) -> dict:
    """J, F and J&F per object and their means over frames, prediction against ground truth (job folder,
    label zarr or DAVIS PNG folders, flattened by the exports' rule). ``skip_first_last``: the DAVIS
    challenge protocol. Returns {"objects": {id: {"J", "F", "JF"}}, "J", "F", "JF", "frames"}; raises
    :class:`EvaluationError` when the two cannot be compared (frame counts, sizes)."""
    n_p, read_p = read_label_source(pred)
    n_g, read_g = read_label_source(gt)
    if n_p != n_g:
        raise EvaluationError(f"{pred} has {n_p} frames, {gt} has {n_g}: they must be the same video")
    frames = range(1, n_g - 1) if skip_first_last and n_g > 2 else range(n_g)
    per: dict[int, dict[str, list]] = {}
    for k, t in enumerate(frames):
        g, p = read_g(t), read_p(t)
        if g.shape != p.shape:
            raise EvaluationError(f"frame {t}: prediction {p.shape} vs ground truth {g.shape}")
        for oid in sorted(set(np.unique(g).tolist()) - {0, 255}):
            d = per.setdefault(int(oid), {"J": [], "F": []})
            d["J"].append(region_j(p == oid, g == oid))
            d["F"].append(boundary_f(p == oid, g == oid))
        if progress:
            progress(k + 1, len(frames))
    if not per:
        raise EvaluationError(f"{gt}: no object in the ground truth")
    objects = {str(o): {"J": float(np.mean(v["J"])), "F": float(np.mean(v["F"]))} for o, v in per.items()}
    for v in objects.values():
        v["JF"] = (v["J"] + v["F"]) / 2
    j = float(np.mean([v["J"] for v in objects.values()]))
    f = float(np.mean([v["F"] for v in objects.values()]))
    return {"J": j, "F": f, "JF": (j + f) / 2, "objects": objects, "frames": len(frames)}


def is_job(path) -> bool:
    """A samtrack job folder (or its results.zarr)."""
    p = Path(path)
    return (p / "results.zarr").exists() or (p.name == "results.zarr" and p.is_dir())


def is_ctc(res, gt) -> bool:
    """``gt`` is a CTC ground-truth folder (``TRA/``) and ``res`` a CTC result folder or a job folder."""
    return (Path(gt) / "TRA").is_dir() and ((Path(res) / "res_track.txt").exists() or is_job(res))


def ctc_metrics(res, gt, *, allow_incomplete: bool = False) -> dict:
    """SEG and TRA (py-ctcmetrics) of ``res`` against the CTC ground truth ``gt``.

    ``res``: a CTC result folder (``maskTTT.tif`` + ``res_track.txt``) or a samtrack job folder,
    exported to a temporary CTC folder first (``allow_incomplete`` as in the export; the
    export's warnings and hidden objects are returned under ``export``). Returns
    ``{"valid": bool, "SEG": float, "TRA": float, "problems": [validator messages], ...}``;
    SEG/TRA are absent when the result is invalid. Prints nothing.
    """
    if is_job(res):
        return _ctc_metrics_of_job(res, gt, allow_incomplete=allow_incomplete)
    return _ctc_metrics_of_folder(res, gt)


def _ctc_metrics_of_job(job, gt, *, allow_incomplete: bool) -> dict:
    import tempfile

    from samtrack.io.export import export
    from samtrack.job import open_results

    job = Path(job)
    store, _ = open_results(job.parent if job.name == "results.zarr" else job)
    with tempfile.TemporaryDirectory(prefix="samtrack-ctc-") as d:
        rep = export(store, "ctc", Path(d) / "RES", allow_incomplete=allow_incomplete)
        out = _ctc_metrics_of_folder(rep.path, gt)
    out["export"] = {"warnings": list(rep.warnings), "hidden": {str(o): list(f) for o, f in rep.hidden.items()}}
    return out


def _ctc_metrics_of_folder(res, gt) -> dict:
    import contextlib
    import io
    import warnings

    from ctc_metrics import evaluate_sequence, validate_sequence

    n_res = len(list(Path(res).glob("*.tif")))
    n_gt = len(list((Path(gt) / "TRA").glob("*.tif")))
    if n_res != n_gt:
        raise EvaluationError(f"{res} has {n_res} mask files, the ground truth {gt} has {n_gt}: "
                              "they must be the same sequence")
    if not (Path(res) / "res_track.txt").read_text().strip():
        return {"valid": False, "problems": ["no tracks in the result (empty res_track.txt)"]}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        valid = validate_sequence(str(res), threads=1)  # threads=1: no fork of a threaded process
        scores = evaluate_sequence(str(res), str(gt), metrics=["SEG", "TRA"], threads=1)
    return {"valid": bool(valid.get("Valid", 0)),
            **{k: float(v) for k, v in scores.items() if k != "Valid" and isinstance(v, (int, float))},
            "problems": sorted({str(w.message) for w in caught if "ctc_metrics" in w.filename})}
