"""The canonical model grid (``msdn_core.grid``): orientation, resampling, labels, scores and boxes."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core import geometry
from msdn_core.boxes import SliceBox
from msdn_core.card import InputSpec, ModelCard
from msdn_core.grid import ModelGrid, orientation_of
from msdn_core.volume import Volume

GRID = ModelGrid((1.25, 1.25), "LPS")


def flipped_x(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with the column axis reversed (as dcm2niix may write them)."""
    out = affine.copy()
    out[:3, 0] *= -1
    out[:3, 3] = affine[:3, 3] + affine[:3, 0] * (array.shape[2] - 1)
    return array[:, :, ::-1].copy(), out


def swapped_xy(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels with rows and columns exchanged."""
    out = affine.copy()
    out[:, [0, 1]] = affine[:, [1, 0]]
    return array.transpose(0, 2, 1).copy(), out


def sphere(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    cz, cy, cx = centre_mm
    return (((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= radius_mm**2).astype(np.uint8)


def test_orientation_letters_by_hand():
    assert orientation_of(geometry.axis_affine((2.5, 0.7, 0.7))) == "LPS"
    assert orientation_of(np.diag([-0.7, -0.7, 2.5, 1.0])) == "RAS"
    _, affine = swapped_xy(np.zeros((2, 3, 4)), geometry.axis_affine((1, 1, 1)))
    assert orientation_of(affine) == "PLS"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"spacing_mm": (0.0, 1.0)}, "spacing_mm"),
        ({"spacing_mm": (1.0,)}, "spacing_mm"),
        ({"orientation": "LPA"}, "orientation"),
        ({"rtol": 1.5}, "rtol"),
    ],
)
def test_bad_grid_values_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ModelGrid(**kwargs)


def test_card_carries_the_grid_and_older_cards_read_without_one():
    spec = InputSpec(spacing_mm=[1.25, 1.25], orientation="lps")
    assert spec.orientation == "LPS" and spec.model_grid().spacing_mm == (1.25, 1.25)
    card = ModelCard(name="m", method="unet", classes=[], input=spec)
    assert ModelCard.from_json(card.to_json()).input.model_grid() == spec.model_grid()
    old = ModelCard(name="m", method="unet", classes=[], input=InputSpec())
    assert "spacing_mm" not in old.to_dict()["input"] and "orientation" not in old.to_dict()["input"]
    assert not old.input.model_grid().defined
    assert old.input.model_grid().transform((3, 8, 8), geometry.axis_affine((1, 0.7, 0.7))).identity
    with pytest.raises(ValueError, match="spacing_mm"):
        InputSpec(spacing_mm=[1.0, -1.0])


def test_model_grid_size_spacing_and_affine_by_hand():
    affine = geometry.axis_affine((2.5, 0.7, 0.7), origin=(10.0, 20.0, 30.0))
    t = GRID.transform((4, 512, 500), affine)
    assert t.shape == (4, round(512 * 0.7 / 1.25), round(500 * 0.7 / 1.25)) == (4, 287, 280)
    assert t.spacing == pytest.approx((2.5, 1.25, 1.25))
    assert t.slice_aligned and not t.identity
    # Edge-aligned: the model's first voxel edge is the input's first edge (origin - 0.35 mm).
    np.testing.assert_allclose(t.affine[:3, 3], [10.0 - 0.35 + 0.625, 20.0 - 0.35 + 0.625, 30.0])
    # Within rtol: not resampled.
    assert (
        ModelGrid((1.25, 1.25), "LPS", rtol=0.01).transform((4, 8, 8), geometry.axis_affine((1, 1.26, 1.26))).identity
    )


def test_resampling_a_linear_ramp_gives_its_values_at_the_model_voxel_centres():
    ramp = np.tile(np.arange(200, dtype=np.float32) * 3.0, (2, 40, 1))  # 3 HU per column
    t = ModelGrid((1.0, 1.4)).transform(ramp.shape, geometry.axis_affine((1, 1.0, 0.7)))
    out = t.to_model(ramp)
    assert out.shape == (2, 40, 100)
    # model column j's centre is input column (j + 0.5) * 2 - 0.5; a symmetric anti-aliasing filter
    # keeps a ramp, so away from the borders the value is exactly the ramp there
    j = np.arange(5, 95)
    np.testing.assert_allclose(out[0, 10, j], 3.0 * ((j + 0.5) * 2 - 0.5), atol=1e-3)
    np.testing.assert_array_equal(out[:, :, 10], out[0, 0, 10])


def test_flipped_and_permuted_copies_give_the_identical_model_input_and_answer():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 100, (5, 60, 70)).astype(np.float32)
    affine = geometry.axis_affine((2.0, 0.7, 0.8))
    base = GRID.transform(image.shape, affine)
    labels = (rng.random(base.shape) > 0.97).astype(np.uint8)
    for array, aff in (flipped_x(image, affine), swapped_xy(image, affine)):
        t = GRID.transform(array.shape, aff)
        np.testing.assert_allclose(t.affine, base.affine, atol=1e-9)
        np.testing.assert_array_equal(t.to_model(array), base.to_model(image))
        back = t.labels_to_native(labels)  # the same model answer, on this copy's grid
        np.testing.assert_array_equal(
            geometry.map_to_grid(back, aff, image.shape, affine), base.labels_to_native(labels)
        )


def test_flipped_z_maps_slices_one_to_one():
    image = np.arange(4 * 3 * 3, dtype=np.float32).reshape(4, 3, 3)
    affine = geometry.axis_affine((2.0, 1.25, 1.25))
    flipped = affine.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 2] * 3
    t = GRID.transform(image.shape, flipped)
    assert t.slice_aligned and t.native_slices(0, 1) == (3, 4)
    np.testing.assert_array_equal(t.to_model(image, start=1, stop=3), image[::-1][1:3])


def test_a_sphere_survives_the_round_trip_and_keeps_its_volume():
    spacing = (2.5, 0.7, 0.7)
    mask = sphere((20, 200, 200), spacing, (25.0, 70.0, 63.0), 8.0)
    t = GRID.transform(mask.shape, geometry.axis_affine(spacing))
    model = t.labels_to_model(mask)
    back = t.labels_to_native(model)
    native_mm3 = mask.sum() * np.prod(spacing)
    assert model.sum() * np.prod(t.spacing) == pytest.approx(native_mm3, rel=0.05)
    assert 2 * (mask & back).sum() / (mask.sum() + back.sum()) >= 0.95


def test_two_classes_come_back_in_their_places():
    spacing = (2.0, 0.6, 0.6)
    a = sphere((6, 120, 120), spacing, (6.0, 30.0, 30.0), 9.0)
    b = sphere((6, 120, 120), spacing, (6.0, 40.0, 45.0), 6.0) * 2
    mask = np.where(b > 0, b, a).astype(np.uint8)
    t = GRID.transform(mask.shape, geometry.axis_affine(spacing))
    back = t.labels_to_native(t.labels_to_model(mask))
    for value in (1, 2):
        m, r = mask == value, back == value
        assert 2 * (m & r).sum() / (m.sum() + r.sum()) >= 0.9


def test_scores_come_back_where_asked_only():
    t = GRID.transform((2, 100, 100), geometry.axis_affine((1, 0.625, 0.625)))  # model: 50 x 50
    scores = np.full(t.shape, 200, np.uint8)
    where = np.zeros((2, 100, 100), np.uint8)
    where[1, 10:20, 30:40] = 1
    back = t.scores_to_native(scores, where=[where])
    assert back.shape == (2, 100, 100)
    assert (back[1, 10:20, 30:40] == 200).all()
    assert back[0].max() == 0 and back[1, 50:].max() == 0


def test_boxes_by_hand_and_round_trip():
    affine = geometry.axis_affine((2.0, 0.625, 0.625))
    image, aff = flipped_x(np.zeros((4, 100, 100), np.float32), affine)
    t = GRID.transform(image.shape, aff)  # x flipped, in-plane halved
    # columns [10, 21) of a 100-column axis stored backwards are [79, 90) in LPS order; / 2 on the model grid
    assert t.box_to_model([10, 5, 1, 21, 8, 2]) == [39.5, 2.5, 1.0, 45.0, 4.0, 2.0]
    for box in ([10, 5, 1, 21, 8, 2], [0.5, 0, 0, 100, 99.5, 4]):
        assert t.box_to_native(t.box_to_model(box)) == pytest.approx(box)
    model = t.slice_boxes_to_model([SliceBox(3, 10, 5, 21, 8, label=1)])
    assert model == [SliceBox(3, 39.5, 2.5, 45.0, 4.0, label=1)]
    assert t.slice_boxes_to_native(model) == [SliceBox(3, 10, 5, 21, 8, label=1)]


def test_a_coarser_model_z_puts_two_slices_on_one():
    t = ModelGrid((2.0, 1.0, 1.0)).transform((8, 10, 10), geometry.axis_affine((1.0, 1.0, 1.0)))
    assert t.shape == (4, 10, 10) and not t.slice_aligned
    assert [b.slice for b in t.slice_boxes_to_model([SliceBox(5, 1, 1, 4, 4)])] == [2]
    assert [b.slice for b in t.slice_boxes_to_native([SliceBox(2, 1, 1, 4, 4)])] == [4, 5]
    ramp = np.repeat(np.arange(8, dtype=np.float32)[:, None, None], 10, 1).repeat(10, 2)
    np.testing.assert_allclose(t.to_model(ramp)[1:3, 5, 5], [2.5, 4.5], atol=0.05)


def test_model_volume_fills_batch_by_batch_from_a_lazy_volume():
    rng = np.random.default_rng(1)
    full = rng.normal(0, 50, (6, 40, 40)).astype(np.float32)
    affine = geometry.axis_affine((2.0, 0.7, 0.7))
    calls: list[tuple[int, int]] = []
    array = np.zeros_like(full)

    def loader(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        array[start:stop] = full[start:stop]
        return array

    vol = Volume(array, affine, "dicom", loader=loader)
    t = GRID.transform_for(vol)
    model = t.model_volume(vol)
    assert model.loader is not None and calls == []
    part = model.load(2, 4)
    assert calls == [(2, 4)]
    np.testing.assert_array_equal(part[2:4], t.to_model(full)[2:4])
    model.load(0, 6)
    np.testing.assert_array_equal(model.array, t.to_model(full))
