"""Layering rules: the core packages never import napari or Qt (headless servers, batch jobs)."""
from __future__ import annotations

import subprocess
import sys


def test_core_packages_and_cli_do_not_import_napari_or_qt():
    code = (
        "import sys, importlib, pkgutil\n"
        "import samtrack, samtrack.io, samtrack.memory, samtrack.session, samtrack.cli, samtrack.job\n"
        "for pkg in (samtrack.io, samtrack.memory, samtrack.session):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy'))\n"
        "print(len([m for m in sys.modules if m.startswith('samtrack.')]), bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    n, bad = r.stdout.strip().split(" ", 1)
    assert int(n) > 20 and bad == "[]", r.stdout
