"""Prompts are read and validated as users expect: detector boxes past the border are clipped,
mask prompts come from any label image and the object's label is explicit, never guessed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import samtrack
from samtrack.errors import PromptError
from samtrack.session.prompt_file import PromptFileError, load_prompt_file
from samtrack.session.prompts import check_box, make_mask
from tests import model_utils as mu

W, H = 64, 48


@pytest.mark.parametrize("box, want", [
    ((-2.6, 19.5, 25.4, 49.3), (0.0, 19.5, 25.4, 48.0)),  # a detector box past the left and bottom borders
    ((10, -5, 70, 20), (10.0, 0.0, 64.0, 20.0)),
    ((1, 2, 3, 4), (1.0, 2.0, 3.0, 4.0)),
])
def test_boxes_are_clipped_to_the_frame(box, want):
    assert check_box(box, W, H) == want


@pytest.mark.parametrize("box", [(70, 50, 90, 60), (-20, 5, -1, 30), (5, 48, 20, 60), (-10, -10, 0, 0)])
def test_a_box_with_no_overlap_is_refused(box):
    with pytest.raises(PromptError, match="outside"):
        check_box(box, W, H)


def test_session_segments_a_clipped_box_and_refuses_an_outside_one(tmp_path):
    ck = mu.make_checkpoint(tmp_path / "ck.pt", image_size=128)
    v = np.full((3, H, W, 3), 20, np.uint8)
    v[:, 20:48, 0:25] = (210, 120, 90)
    with samtrack.open_session(v, checkpoint=ck, image_size=128, device="cpu", workdir=tmp_path / "w") as s:
        r = s.add_box(0, 1, [-2.6, 19.5, 25.4, 49.3])
        assert r.masks.shape == (1, H, W)
        assert s.prompt_at(0, 1).box == (0.0, 19.5, 25.4, 48.0)
        with pytest.raises(PromptError, match="outside"):
            s.add_box(0, 2, [70, 50, 90, 60])
        assert 2 not in s.obj_ids or not s.keyframes(2)


def _labels() -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    lab[5:15, 5:20] = 1
    lab[25:40, 30:50] = 2
    return lab


def _write_prompts(tmp_path, prompt: dict) -> list:
    (tmp_path / "p.json").write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"frame": 0, **prompt}]}]}))
    return load_prompt_file(tmp_path / "p.json", n_frames=3, width=W, height=H)


def test_davis_indexed_png_needs_the_object_label(tmp_path):
    im = Image.fromarray(_labels(), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))  # DAVIS colours: index 1 red, 2 green
    im.save(tmp_path / "ann.png")
    got = _write_prompts(tmp_path, {"mask": "ann.png", "label": 2})[0].prompts[0]["mask"]
    np.testing.assert_array_equal(got, _labels() == 2)  # the palette index, not a colour
    with pytest.raises(PromptFileError, match='"label"'):
        _write_prompts(tmp_path, {"mask": "ann.png"})
    with pytest.raises(PromptFileError, match="empty"):
        _write_prompts(tmp_path, {"mask": "ann.png", "label": 7})


def test_label_tiff_binary_png_rgb_and_threshold(tmp_path):
    lab16 = _labels().astype(np.uint16) * 300  # labels 300 and 600
    tifffile.imwrite(tmp_path / "lab.tif", lab16)
    got = _write_prompts(tmp_path, {"mask": "lab.tif", "label": 600})[0].prompts[0]["mask"]
    np.testing.assert_array_equal(got, _labels() == 2)
    Image.fromarray(((_labels() == 1) * 255).astype(np.uint8)).save(tmp_path / "bin.png")
    got = _write_prompts(tmp_path, {"mask": "bin.png"})[0].prompts[0]["mask"]
    np.testing.assert_array_equal(got, _labels() == 1)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[_labels() == 1] = (255, 0, 0)
    rgb[_labels() == 2] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    got = _write_prompts(tmp_path, {"mask": "rgb.png", "label": [0, 0, 255]})[0].prompts[0]["mask"]
    np.testing.assert_array_equal(got, _labels() == 2)
    with pytest.raises(PromptFileError, match="colours"):
        _write_prompts(tmp_path, {"mask": "rgb.png"})
    soft = (_labels() == 1) * 200 + 20  # a soft mask: background 20, object 220
    Image.fromarray(soft.astype(np.uint8)).save(tmp_path / "soft.png")
    got = _write_prompts(tmp_path, {"mask": "soft.png", "threshold": 128})[0].prompts[0]["mask"]
    np.testing.assert_array_equal(got, _labels() == 1)


def test_add_mask_takes_a_label_image_with_an_explicit_label():
    np.testing.assert_array_equal(make_mask(_labels(), W, H, label=1).mask, _labels() == 1)
    with pytest.raises(PromptError, match="label=N"):
        make_mask(_labels(), W, H)
    assert make_mask(_labels() == 2, W, H).mask.sum() == (_labels() == 2).sum()


def _load(tmp_path, data: dict):
    (tmp_path / "f.json").write_text(json.dumps(data))
    return load_prompt_file(tmp_path / "f.json", n_frames=3, width=W, height=H)


def test_find_prompts_in_a_prompt_file(tmp_path):
    from samtrack.session.prompts import Concept, Everything

    got = _load(tmp_path, {"find": [{"frame": 0, "text": "cell"},
                                    {"frame": 2, "boxes": [[-3, 1, 20, 30], [30, 5, 50, 40]], "box_labels": [1, 0],
                                     "threshold": 0.3},
                                    {"frame": 1, "everything": True}]})
    assert list(got) == []  # no "objects": only object-creating prompts
    assert got.finds == [(0, Concept("cell", (), (), 0.5)),
                         (2, Concept(None, ((0.0, 1.0, 20.0, 30.0), (30.0, 5.0, 50.0, 40.0)), (1, 0), 0.3)),
                         (1, Everything(0.8))]
    both = _load(tmp_path, {"objects": [{"id": 4, "prompts": [{"frame": 0, "points": [[3, 4]]}]}],
                            "find": [{"frame": 1, "text": "nucleus"}]})
    assert [o.obj_id for o in both] == [4] and both.finds[0][1].text == "nucleus"


@pytest.mark.parametrize("entry, words", [
    ({"frame": 0}, "needs a text"),
    ({"frame": 0, "text": ""}, "noun phrase"),
    ({"frame": 9, "text": "cell"}, "frame index 0..2"),
    ({"frame": 0, "text": "cell", "colour": "red"}, "unknown key"),
    ({"frame": 0, "boxes": [[1, 2, 3, 4]], "box_labels": [1, 1]}, "2 labels"),
    ({"frame": 0, "boxes": [[1, 2, 3, 4]], "box_labels": [0]}, "positive"),
    ({"frame": 0, "text": "cell", "threshold": "high"}, "number between 0 and 1"),
    ({"frame": 0, "everything": True, "text": "cell"}, "no text"),
])
def test_bad_find_prompts_name_the_entry(tmp_path, entry, words):
    with pytest.raises(PromptFileError, match="find\\[0\\]") as e:
        _load(tmp_path, {"find": [entry]})
    assert words in str(e.value)


def test_a_file_without_objects_or_find_says_both(tmp_path):
    with pytest.raises(PromptFileError, match='"find"'):
        _load(tmp_path, {"objects": []})
