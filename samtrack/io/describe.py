"""Describe any source, including one that cannot be opened until the user makes a choice.

``samtrack info`` calls :func:`describe_source`: a hyperstack with several Z
planes is described (axes, sizes, dtype) with the options that would open it,
instead of a refusal.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from samtrack.errors import AmbiguousAxesError, CorruptSourceError, UnsupportedSourceError
from samtrack.io.axes import axis_sizes, resolve_axes
from samtrack.io.registry import candidate_readers, open_reader, resolve_source
from samtrack.io.readers.stack import StackSource, depth_note

log = logging.getLogger(__name__)


def _locators() -> dict[str, Callable[[Any, dict], StackSource]]:
    from samtrack.io.readers.stack import locate_array, locate_tiff, locate_zarr

    return {
        "tiff": lambda s, o: locate_tiff(os.fspath(s), series=o.get("series", 0)),
        "zarr": lambda s, o: locate_zarr(s, axes=o.get("axes")),
        "numpy": lambda s, o: locate_array(s, axes=o.get("axes"), fps=o.get("fps")),
    }


def describe_source(source: Any, *, reader: str | None = None, **reader_options) -> dict:
    """What ``source`` holds, as a JSON-serialisable dict; never raises :class:`AmbiguousAxesError`.

    ``source`` and ``reader_options`` are those of ``open_video`` (``z``,
    ``channels``, ``time_axis``, ``axes``, ``stream``, ``fps``...). Other errors
    (missing file, damage, an option out of range) are raised as by
    ``open_reader``.

    Keys, always present:

    - ``source`` (str): the path, or ``"<ndarray>"`` / ``"<Array>"`` for in-memory data;
    - ``opened`` (bool): True when the source opens with these options;
    - ``reader`` (str): the reader that opened it, or the stack reader that found the axes;
    - ``n_frames``, ``height``, ``width`` (int, displayed size), ``fps`` (float or None),
      ``dtype`` (str, sample type), ``channels`` (int: per frame when opened; in the
      source otherwise), ``rotation`` (clockwise degrees), ``streams`` (list of dicts,
      video files), ``notes`` (list of str): as :meth:`VideoInfo.to_dict`;
    - ``axes`` (str or None): one letter per dimension of a stack (T, Z, C, S, Y, X...);
      ``shape`` (list of int or None); ``sizes`` (dict axis -> size, or None);
    - ``choices`` (list of dict): what the user must pick to open it, empty when
      ``opened``; each ``{"option": "--z", "keyword": "z", "why": "5 Z planes per
      time point", "range": [0, 4]}`` (``range`` inclusive, or ``values`` for
      ``time_axis``); ``option`` is the CLI option, ``keyword`` the python one;
    - ``message`` (str or None): why it did not open.
    """
    label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"
    try:
        rd = open_reader(source, reader=reader, **reader_options)
    except AmbiguousAxesError as e:
        return _describe_unopened(source, label, reader, reader_options, e)
    with rd:
        d = rd.info.to_dict()
        layout: StackSource | None = getattr(rd, "layout", None)
    d.update(source=label, opened=True, choices=[], message=None, axes=None, shape=None, sizes=None)
    if layout is not None:
        d.update(axes=layout.axes, shape=list(layout.shape), sizes=axis_sizes(layout.axes, layout.shape))
    return d


def _describe_unopened(source, label: str, reader: str | None, options: dict, error: AmbiguousAxesError) -> dict:
    locators = _locators()
    source = resolve_source(source) if reader != "images" else source
    for spec in candidate_readers(source, reader=reader):
        locate = locators.get(spec.name)
        if locate is None:
            continue
        try:
            src = locate(source, options)
        except (UnsupportedSourceError, CorruptSourceError) as e:
            log.debug("%s cannot locate %s: %s", spec.name, label, e)
            continue
        try:
            return _stack_dict(src, spec.name, label, options, error)
        finally:
            src.close()
    raise error


def _stack_dict(src: StackSource, reader: str, label: str, options: dict, error: AmbiguousAxesError) -> dict:
    plan, choices = resolve_axes(src.axes, src.shape, options.get("time_axis"), options.get("z"),
                                 options.get("channels"), label, src.alpha_last)
    sizes = axis_sizes(src.axes, src.shape)
    c_sizes = [n for a, n in sizes.items() if a in ("C", "S")]
    notes = [n for n in (depth_note(src.dtype),) if n]
    return {
        "source": label, "opened": False, "reader": reader,
        "n_frames": plan.n_frames if plan else None, "height": plan.height if plan else None,
        "width": plan.width if plan else None, "fps": src.fps, "dtype": src.dtype,
        "channels": max(c_sizes) if c_sizes else 1, "rotation": 0, "streams": [], "notes": notes,
        "axes": src.axes, "shape": list(src.shape), "sizes": sizes,
        "choices": [c.to_dict() for c in choices], "message": str(error),
    }
