"""The remote wire format: masks as COCO RLE, arrays of whitelisted dtypes, typed errors."""
import base64
import json
import zlib

import numpy as np
import pytest

from samtrack import errors
from samtrack.remote import wire
from samtrack.session.types import FrameResult


def _result(rng, n=2, h=37, w=53):
    masks = rng.random((n, h, w)) > 0.6
    logits = rng.normal(size=(n, h, w)).astype(np.float32)
    return FrameResult(7, [3, 11][:n], masks, logits, np.array([1.5, np.nan][:n], np.float32),
                       np.array([0.25, 0.75][:n], np.float32))


def test_frame_result_round_trip_through_json_keeps_masks_and_scores():
    rng = np.random.default_rng(0)
    res = _result(rng)
    d = json.loads(json.dumps(wire.encode_result(res)))  # what a client really receives
    back = wire.decode_result(d, 37, 53)
    assert back.frame_idx == 7 and back.obj_ids == [3, 11]
    np.testing.assert_array_equal(back.masks, res.masks)
    assert back.masks.dtype == bool and back.masks.flags.c_contiguous
    np.testing.assert_array_equal(back.object_scores, res.object_scores)  # NaN survives as null
    np.testing.assert_array_equal(back.ious, res.ious)
    assert "logits" not in d
    np.testing.assert_array_equal(back.logits > 0, res.masks)  # sign of the stand-in logits is the mask
    with_logits = wire.decode_result(json.loads(json.dumps(wire.encode_result(res, logits=True))), 37, 53)
    np.testing.assert_array_equal(with_logits.logits, res.logits)


def test_rle_is_the_coco_one_and_far_smaller_than_dense_masks():
    from pycocotools import mask as mask_utils

    m = np.zeros((1, 512, 512), bool)
    m[0, 100:300, 50:250] = True
    rle = wire.encode_masks(m)[0]
    assert rle["size"] == [512, 512]
    ref = mask_utils.encode(np.asfortranarray(m[0].astype(np.uint8)))
    assert rle["counts"] == ref["counts"].decode()
    assert len(json.dumps(rle)) < 1000  # a 200-column square: ~450 B, vs 262,144 bools
    assert wire.encode_masks(np.zeros((0, 4, 4), bool)) == []
    assert wire.decode_masks([], 4, 5).shape == (0, 4, 5)


def test_mask_of_another_size_or_garbage_is_a_wire_error():
    rle = wire.encode_masks(np.ones((1, 8, 8), bool))
    with pytest.raises(wire.WireError, match="8, 8"):
        wire.decode_masks(rle, 8, 9)
    with pytest.raises(wire.WireError):
        wire.decode_masks([{"counts": "x"}], 8, 8)
    with pytest.raises(wire.WireError):
        wire.decode_result({"frame": 0, "obj_ids": [1]}, 8, 8)


@pytest.mark.parametrize("dtype", ["bool", "uint8", "uint16", "uint32", "int32", "float32"])
def test_array_round_trip(dtype):
    a = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    back = wire.decode_array(json.loads(json.dumps(wire.encode_array(a))))
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


def test_arrays_refuse_unlisted_dtypes_and_wrong_sizes():
    with pytest.raises(wire.WireError, match="not sent"):
        wire.encode_array(np.array(["a"]))
    with pytest.raises(wire.WireError, match="not one of"):  # never evaluated, whatever the string says
        wire.decode_array({"dtype": "object", "shape": [1], "zlib": ""})
    ok = wire.encode_array(np.zeros(4, np.uint8))
    with pytest.raises(wire.WireError, match="holds 4"):
        wire.decode_array({**ok, "shape": [5]})
    with pytest.raises(wire.WireError):
        wire.decode_array({**ok, "zlib": base64.b64encode(b"not zlib").decode()})
    big_endian = {"dtype": "uint16", "shape": [1], "zlib": base64.b64encode(zlib.compress(b"\x01\x00")).decode()}
    assert wire.decode_array(big_endian)[0] == 1  # little-endian on the wire


def test_errors_cross_as_their_own_class_and_message():
    msg = "frame 99 is out of range: the video has 10 frames (0..9)"
    body = json.loads(json.dumps(wire.error_body(errors.FrameIndexError(msg))))
    with pytest.raises(errors.FrameIndexError) as ei:
        wire.raise_error(body, 400)
    assert str(ei.value) == msg
    with pytest.raises(errors.UnknownObjectError, match="unknown object 4"):
        wire.raise_error(wire.error_body(errors.UnknownObjectError("unknown object 4")))
    from samtrack.io.export import ExportError

    with pytest.raises(ExportError):
        wire.raise_error({"error": {"type": "ExportError", "message": "m"}})
    # a name that is not a samtrack error (or a builtin someone hopes to instantiate) stays a SamtrackError
    for name in ("SystemExit", "os.system", "KeyboardInterrupt"):
        with pytest.raises(errors.SamtrackError) as ei:
            wire.raise_error({"error": {"type": name, "message": "m"}})
        assert type(ei.value) is errors.SamtrackError
    with pytest.raises(errors.SamtrackError, match="502"):
        wire.raise_error("<html>bad gateway</html>", 502)
