"""The one crop policy (msdn_core.crop) and InputSpec's pad / unpad, against positions worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core.card import InputSpec
from msdn_core.crop import Window, crop_window, pad_to_multiple, unpad, window_origin


@pytest.mark.parametrize(
    ("lo", "hi", "size", "window", "offset", "origin"),
    [
        (40, 50, 100, 32, 0.0, 29),  # centred: 45 - 16
        (2, 10, 100, 32, 0.0, 0),  # near the start: shifted inside, not padded
        (90, 99, 100, 32, 0.0, 68),  # near the end: 100 - 32
        (0, 10, 20, 32, 0.0, -11),  # image smaller than the window: centred on the box (5 - 16), image inside
        (15, 20, 20, 32, 0.0, 0),  # centred would be 2: shifted back so that the whole image stays inside
        (40, 50, 100, 32, 20.0, 40),  # jitter offset: 49, then kept around the box (x1 = 40 at most)
        (40, 50, 100, 32, -20.0, 18),  # 9 would lose the box's end: 50 - 32
        (40.5, 41.5, 100, 32, 0.0, 25),  # halves round up: floor(41 - 16 + 0.5)
    ],
)
def test_window_origin_by_hand(lo, hi, size, window, offset, origin):
    assert window_origin(lo, hi, size=size, window=window, offset=offset) == origin


def test_window_keeps_the_box_and_stays_inside_for_every_box():
    rng = np.random.default_rng(0)
    for _ in range(500):
        size = int(rng.integers(40, 200))
        lo = float(rng.uniform(0, size - 1))
        hi = float(rng.uniform(lo + 0.5, min(size, lo + 30)))
        origin = window_origin(lo, hi, size=size, window=32, offset=float(rng.uniform(-8, 8)))
        assert 0 <= origin <= size - 32
        assert origin <= lo and hi <= origin + 32


def test_crop_window_grows_for_large_boxes_unless_told_not_to():
    w = crop_window([10, 20, 60, 30], (128, 128), (32, 32), size_multiple=16)
    assert (w.height, w.width) == (32, 64) and (w.y0, w.x0) == (9, 3)
    fixed = crop_window([10, 20, 60, 30], (128, 128), (32, 32), size_multiple=16, grow=False)
    assert (fixed.height, fixed.width) == (32, 32) and fixed.x0 == 19
    with pytest.raises(ValueError, match="x1 < x2"):
        crop_window([5, 5, 5, 9], (64, 64), (32, 32))


def test_window_extract_pads_only_outside_the_image():
    image = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    out = Window(-2, 5, 4, 5).extract(image, -1.0)
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out[:2], -1.0)
    np.testing.assert_array_equal(out[2:, :3], image[0:2, 5:8])
    np.testing.assert_array_equal(out[2:, 3:], -1.0)
    stack = Window(0, 0, 2, 2).extract(np.stack([image, image + 100]), 0.0)  # (..., H, W)
    np.testing.assert_array_equal(stack[1], image[:2, :2] + 100)


def test_input_spec_pad_unpad_and_fill():
    spec = InputSpec(mean=-200.0, std=300.0, clip=[-1000.0, 1000.0], patch_size=[32, 32], size_multiple=16)
    volume = np.full((2, 37, 50), 5.0, np.float32)
    volume[0, 0, 0] = -3000.0
    assert spec.pad_value(volume) == -1000.0  # the lowest value, clipped
    padded, shape = spec.pad_to_multiple(volume, spec.pad_value(volume))
    assert padded.shape == (2, 48, 64) and shape == (37, 50)
    assert (padded[:, 37:] == -1000.0).all() and (padded[:, :, 50:] == -1000.0).all()
    np.testing.assert_array_equal(spec.unpad(padded, shape), volume)
    same, _ = pad_to_multiple(np.zeros((16, 32)), 16, 0.0)
    assert same.shape == (16, 32) and unpad(same, (16, 32)).shape == (16, 32)
    np.testing.assert_allclose(spec.normalise(np.array([-5000.0, 400.0])), [-800 / 300, 2.0])
    with pytest.raises(ValueError, match="size_multiple"):
        InputSpec(size_multiple=0)
