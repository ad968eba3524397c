"""Layering rules: the core packages never import napari or Qt (headless servers, batch jobs), nor the server's
FastAPI/uvicorn (the CLI neither: `samtrack serve` imports them when it runs)."""
from __future__ import annotations

import subprocess
from pathlib import Path
import sys


def test_core_packages_and_cli_do_not_import_napari_qt_or_the_server_stack():
    code = (
        "import sys, importlib, pkgutil\n"
        "import samtrack, samtrack.io, samtrack.memory, samtrack.session, samtrack.cli, samtrack.job\n"
        "for pkg in (samtrack.io, samtrack.memory, samtrack.session):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy',\n"
        "                                                       'fastapi', 'uvicorn', 'starlette'))\n"
        "print(len([m for m in sys.modules if m.startswith('samtrack.')]), bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    n, bad = r.stdout.strip().split(" ", 1)
    assert int(n) > 20 and bad == "[]", r.stdout


# what only samtrack/session/backends/ may know: model packages, their configs, and the names of their
# state-dict keys and inference-state entries
MODEL_PACKAGES = ("sam2", "sam3", "hydra", "omegaconf", "torchvision", "open_clip", "timm")
MODEL_NAMES = ("image_encoder.", "sam_mask_decoder", "sam_prompt_encoder", "memory_attention.", "memory_encoder.",
               "maskmem_tpos_enc", "no_obj_embed_spatial", "detector.", "tracker.", "cond_frame_outputs",
               "non_cond_frame_outputs", "maskmem_features", "inference_state", "backbone_fpn", "vision_pos_enc")


def _outside_backends():
    import samtrack

    root = Path(samtrack.__file__).parent
    return [p for p in sorted(root.rglob("*.py")) if "backends" not in p.relative_to(root).parts]


def test_no_module_outside_backends_imports_a_model_package_or_names_its_keys():
    import ast

    bad = []
    for p in _outside_backends():
        tree = ast.parse(p.read_text(), str(p))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                mods = []
            bad += [f"{p.name}:{node.lineno} imports {m}" for m in mods if m.split(".")[0] in MODEL_PACKAGES]
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                bad += [f"{p.name}:{node.lineno} names {k!r}" for k in MODEL_NAMES if k in node.value]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_import_and_a_key(tmp_path):
    """The scan above would notice the two things it forbids (it is not vacuous)."""
    import ast

    src = "import sam3.model\nx = {'image_encoder.trunk.blocks.0.w': 1}\n"
    tree = ast.parse(src)
    imports = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    consts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert any(m.split(".")[0] in MODEL_PACKAGES for m in imports)
    assert any(k in c for c in consts for k in MODEL_NAMES)


def test_core_and_cli_import_no_model_package():
    """Importing everything but the backends (the CLI included) loads neither sam2 nor sam3:
    a model package is imported when a model is loaded, by its backend only."""
    code = (
        "import sys, importlib, pkgutil\n"
        "import samtrack, samtrack.io, samtrack.memory, samtrack.session, samtrack.cli, samtrack.job\n"
        "for pkg in (samtrack.io, samtrack.memory, samtrack.session):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if '.backends.' not in m.name + '.':\n"
        "            importlib.import_module(m.name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sam2', 'sam3', 'hydra'}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
