"""SAM3's builder and checkpoints: the official architecture at any image size, presets, strict
loading of the official layout, recognition, and errors that name what a checkpoint is."""
from __future__ import annotations

import pytest
import torch

from samtrack.errors import CheckpointError, InvalidOptionError
from samtrack.session import backends
from samtrack.session.backends import sam3_build, sam3_compat
from samtrack.session.models import get_model
from tests import sam3_models as s3
from tests.sam3_models import one_thread  # noqa: F401  (autouse fixture)


def _on_meta(fn, *a, **kw):
    """Run a builder with every tensor on the meta device (no memory, no compute): constructors that
    name "cuda" explicitly (upstream's position-encoding caches) go to meta too."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._device import _device_constructors

    constructors = _device_constructors()

    class Meta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func in constructors:
                if getattr(func, "__name__", "") == "linspace":  # drop-path rates are read with .item()
                    kwargs["device"] = "cpu"
                elif kwargs.get("device") is None or torch.device(kwargs["device"]).type == "cuda":
                    kwargs["device"] = "meta"
            return func(*args, **kwargs)

    with Meta():
        return fn(*a, **kw)


@pytest.fixture(scope="module")
def official():
    """Upstream's build_sam3_video_model (1008 px) and samtrack's "full" preset, both on meta."""
    sam3_compat.ensure_importable()
    import sam3.model_builder as mb

    up = _on_meta(mb.build_sam3_video_model, checkpoint_path=None, load_from_HF=False,
                  bpe_path=sam3_build.bpe_path(), device="meta")
    ours = _on_meta(sam3_build.build_video_model, 1008, "full", device="meta")
    return up, ours


def test_full_preset_is_upstreams_architecture(official):
    up, ours = official
    a, b = up.state_dict(), ours.state_dict()
    assert len(a) == 1465 and sorted(a) == sorted(b)  # detector 1,156 + tracker 309 keys
    assert [k for k in a if a[k].shape != b[k].shape] == []
    assert {n: type(m) for n, m in up.named_modules()} == {n: type(m) for n, m in ours.named_modules()}
    plain = (int, float, bool, str, tuple)
    for name in ("tracker", "detector", ""):
        mu, mo = (up.get_submodule(name), ours.get_submodule(name)) if name else (up, ours)
        va = {k: v for k, v in vars(mu).items() if isinstance(v, plain) and not k.startswith("_")}
        vb = {k: v for k, v in vars(mo).items() if isinstance(v, plain) and not k.startswith("_")}
        assert va == vb, name
    assert sam3_build.recognise(a) == "sam3" and sam3_build.saved_image_size(a) == 1008
    assert sum(v.numel() for v in up.parameters()) / 1e6 == pytest.approx(get_model("sam3").params_m, abs=0.05)


def test_image_size_reaches_every_size_dependent_part(official):
    _, full = official
    m = _on_meta(sam3_build.build_video_model, 560, "full", device="meta")
    t = m.tracker
    assert (t.image_size, t.low_res_mask_size, t.input_mask_size, m.image_size) == (560, 160, 640, 560)
    assert t.maskmem_backbone.mask_downsampler.interpol_size == [640, 640]  # 16 * 560 / 14 (1152 at 1008)
    trunk = m.detector.backbone.vision_backbone.trunk
    assert trunk.blocks[7].attn.freqs_cis.shape[0] == 40 * 40  # a global block's RoPE table: (S / 14)^2
    assert trunk.blocks[0].attn.freqs_cis.shape == full.detector.backbone.vision_backbone.trunk.blocks[0].attn.freqs_cis.shape
    rope = t.transformer.encoder.layers[0].self_attn.freqs_cis
    assert rope.shape[0] == 40 * 40
    with pytest.raises(InvalidOptionError, match="multiple of 14"):
        sam3_build.build_video_model(512, "tiny")
    with pytest.raises(InvalidOptionError, match="width"):
        sam3_build.build_video_model(112, "huge")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return s3.make_checkpoint(tmp_path_factory.mktemp("sam3_build") / "sam3_tiny.pt")


def test_checkpoint_round_trip(tiny_ckpt):
    sd = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    assert set(sd) == {"model"} and all(k.startswith(("detector.", "tracker.")) for k in sd["model"])
    b = backends.load_backend(get_model("sam3"), tiny_ckpt, device="cpu")  # size and width from the file
    assert (b.spec.name, b.image_size, b.low_res_size, b.input_spec.mean) == ("sam3_tiny", 112, 32, (0.5,) * 3)
    got = b.model.state_dict()
    assert sorted(got) == sorted(sd["model"])
    for k, v in sd["model"].items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert backends.recognise(sd["model"]) == "sam3_tiny"
    # another image size: the ViT's RoPE tables are rebuilt, every learned tensor is the file's
    b2 = backends.load_backend(get_model("sam3"), tiny_ckpt, image_size=140, device="cpu")
    assert b2.image_size == 140 and b2.low_res_size == 40
    for k, v in b2.model.state_dict().items():
        if not k.endswith(sam3_build.REGENERATED):
            torch.testing.assert_close(v, sd["model"][k], rtol=0, atol=0)


def test_checkpoint_errors_name_what_the_file_is(tiny_ckpt, tmp_path):
    sd = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["model"]
    spec = get_model("sam3")
    with pytest.raises(CheckpointError, match="sam3_tiny.*not width='full'"):
        backends.load_backend(spec, tiny_ckpt, device="cpu", width="full")
    broken = dict(sd)
    broken.pop("tracker.maskmem_tpos_enc")
    torch.save({"model": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="does not match sam3_tiny.*1 missing.*damaged"):
        backends.load_backend(spec, tmp_path / "broken.pt", device="cpu")
    wider = {k: (torch.zeros(96, *v.shape[1:]) if k.endswith("trunk.patch_embed.proj.weight") else v)
             for k, v in sd.items()}
    assert sam3_build.recognise(wider).startswith("an unregistered SAM3 (ViT width 96, 2 blocks")
    torch.save({"model": wider}, tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match="unregistered SAM3.*nearest model samtrack builds is sam3_tiny"):
        backends.load_backend(spec, tmp_path / "wider.pt", device="cpu")
    # a SAM2.1 tiny state dict (the keys recognition reads)
    sam2 = {f"image_encoder.trunk.blocks.{i}.mlp.weight": torch.zeros(1) for i in range(12)}
    sam2 |= {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7), "no_obj_embed_spatial": torch.zeros(1)}
    assert sam3_build.recognise(sam2) is None
    torch.save({"model": sam2}, tmp_path / "sam2.pt")
    with pytest.raises(CheckpointError, match="not a SAM3 checkpoint: it looks like sam2.1_hiera_tiny; pass model='sam2.1_hiera_tiny'"):
        backends.load_backend(spec, tmp_path / "sam2.pt", device="cpu")


def test_bpe_vocabulary_is_found_or_named(monkeypatch, tmp_path):
    path = sam3_build.bpe_path()
    assert path.endswith(sam3_build.BPE_NAME)
    monkeypatch.setenv("SAMTRACK_SAM3_BPE", str(tmp_path / "nowhere.txt.gz"))
    monkeypatch.setattr(sam3_build.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install open_clip_torch"):
        sam3_build.bpe_path()
    own = tmp_path / sam3_build.BPE_NAME
    own.write_bytes(b"x")
    monkeypatch.setenv("SAMTRACK_SAM3_BPE", str(own))
    assert sam3_build.bpe_path() == str(own.resolve())
