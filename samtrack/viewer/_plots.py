"""Small painted Qt widgets: the keyframe/status timeline and the per-frame confidence plot."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from samtrack.io.result_store import Status

STATUS_COLORS = {Status.NOT_RUN: QColor(70, 70, 70), Status.PROPAGATED: QColor(60, 160, 90),
                 Status.PROMPTED: QColor(240, 200, 40), Status.STALE: QColor(220, 70, 60)}


class _FrameStrip(QWidget):
    """Base: maps x to frame; a click or drag jumps to that frame."""

    frameClicked = Signal(int)

    def __init__(self, height: int, parent=None):
        super().__init__(parent)
        self.n_frames = 1
        self.current = 0
        self.setMinimumHeight(height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def _x(self, f: float) -> float:
        return (f + 0.5) * self.width() / max(1, self.n_frames)

    def frame_at(self, x: float) -> int:
        return int(np.clip(x * self.n_frames / max(1, self.width()), 0, self.n_frames - 1))

    def mousePressEvent(self, ev):  # noqa: N802 (Qt naming)
        self.frameClicked.emit(self.frame_at(ev.position().x()))

    def mouseMoveEvent(self, ev):  # noqa: N802
        if ev.buttons():
            self.frameClicked.emit(self.frame_at(ev.position().x()))

    def set_current(self, f: int) -> None:
        self.current = f
        self.update()


class Timeline(_FrameStrip):
    """One row per object: frame status (not run / propagated / prompted / stale) and keyframe ticks."""

    def __init__(self, parent=None):
        super().__init__(24, parent)
        self.rows: list[tuple[QColor, np.ndarray, list[int]]] = []  # (object colour, status, keyframes)
        self.setToolTip("Per object: grey not run, green tracked, yellow keyframe, red stale. Click to jump.")

    def set_rows(self, n_frames: int, rows) -> None:
        self.n_frames = max(1, n_frames)
        self.rows = list(rows)
        self.setMinimumHeight(max(24, 10 * len(self.rows) + 4))
        self.update()

    def paintEvent(self, ev):  # noqa: N802
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(30, 30, 30))
        n = max(1, len(self.rows))
        rh = (h - 4) / n
        for r, (color, status, keys) in enumerate(self.rows):
            y = 2 + r * rh
            p.fillRect(QRectF(0, y, 4, rh - 1), color)
            # runs of equal status as rectangles (cheap for long videos)
            if len(status):
                edges = np.flatnonzero(np.diff(status)) + 1
                starts = np.r_[0, edges]
                ends = np.r_[edges, len(status)]
                for a, b in zip(starts, ends):
                    x0, x1 = 6 + a * (w - 6) / self.n_frames, 6 + b * (w - 6) / self.n_frames
                    p.fillRect(QRectF(x0, y, max(1.0, x1 - x0), rh - 1), STATUS_COLORS.get(Status(int(status[a])),
                                                                                          QColor(90, 90, 90)))
            p.setPen(QPen(QColor(255, 255, 255), 2))
            for k in keys:
                x = 6 + (k + 0.5) * (w - 6) / self.n_frames
                p.drawLine(QPointF(x, y), QPointF(x, y + rh - 1))
        p.setPen(QPen(QColor(80, 170, 255), 2))
        x = 6 + (self.current + 0.5) * (w - 6) / self.n_frames
        p.drawLine(QPointF(x, 0), QPointF(x, h))
        p.end()

    def frame_at(self, x: float) -> int:
        return int(np.clip((x - 6) * self.n_frames / max(1, self.width() - 6), 0, self.n_frames - 1))


class ConfidencePlot(_FrameStrip):
    """Per object: probability that the object is present (sigmoid of the object score) and the
    predicted IoU, per frame; the threshold under which a frame counts as low confidence."""

    def __init__(self, parent=None):
        super().__init__(70, parent)
        self.curves: list[tuple[QColor, np.ndarray, np.ndarray]] = []  # (colour, presence, iou), NaN = not run
        self.threshold = 0.5
        self.setToolTip("Solid: object presence (sigmoid of the object score); dotted: predicted IoU; "
                        "grey line: low-confidence threshold. Click to jump.")

    def set_curves(self, n_frames: int, curves, threshold: float) -> None:
        self.n_frames = max(1, n_frames)
        self.curves = list(curves)
        self.threshold = threshold
        self.update()

    def _poly(self, values: np.ndarray, h: float) -> list[QPolygonF]:
        polys, cur = [], []
        for f, v in enumerate(values):
            if np.isfinite(v):
                cur.append(QPointF(self._x(f), 2 + (1 - float(v)) * (h - 4)))
            elif cur:
                polys.append(QPolygonF(cur))
                cur = []
        if cur:
            polys.append(QPolygonF(cur))
        return polys

    def paintEvent(self, ev):  # noqa: N802
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(30, 30, 30))
        p.setPen(QPen(QColor(150, 150, 150), 1, Qt.PenStyle.DashLine))
        y = 2 + (1 - self.threshold) * (h - 4)
        p.drawLine(QPointF(0, y), QPointF(w, y))
        for color, presence, iou in self.curves:
            for values, style in ((presence, Qt.PenStyle.SolidLine), (iou, Qt.PenStyle.DotLine)):
                p.setPen(QPen(color, 1.5, style))
                for poly in self._poly(_decimate(values, w), h) if len(values) > 2 * w else self._poly(values, h):
                    p.drawPolyline(poly)
        p.setPen(QPen(QColor(80, 170, 255), 2))
        x = self._x(self.current)
        p.drawLine(QPointF(x, 0), QPointF(x, h))
        p.end()


def _decimate(values: np.ndarray, width: int) -> np.ndarray:
    """Keep the per-pixel minimum (drift shows as dips), same length as ``values``."""
    out = values.copy()
    step = max(1, len(values) // max(1, width))
    for i in range(0, len(values), step):
        seg = values[i:i + step]
        if np.isfinite(seg).any():
            out[i:i + step] = np.nanmin(seg)
    return out


def confidence(results, oid: int) -> tuple[np.ndarray, np.ndarray]:
    """(presence, iou) per frame of ``oid``: presence is the sigmoid of the object score; NaN
    where the frame was never computed or is stale."""
    score, iou = results.scores(oid)
    st = results.status(oid)
    ok = (st == Status.PROPAGATED) | (st == Status.PROMPTED)
    with np.errstate(over="ignore"):
        presence = 1.0 / (1.0 + np.exp(-score.astype(np.float64)))
    return np.where(ok, presence, np.nan), np.where(ok, iou.astype(np.float64), np.nan)


def low_confidence_frames(results, threshold: float) -> np.ndarray:
    """Frames where any object's presence or predicted IoU is under ``threshold``."""
    bad = np.zeros(results.n_frames, bool)
    for oid in results.object_ids:
        p, q = confidence(results, oid)
        with np.errstate(invalid="ignore"):
            bad |= (p < threshold) | (q < threshold)
    return np.flatnonzero(bad)
