"""PNG previews read back with Pillow and checked pixel by pixel against the mask."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from service.model import ModelRuntime
from service.outputs.preview import class_colour, render_preview
from service.pipeline import segment_datasets
from tests.service.helpers import CLIP_2C, THRESHOLDS_2C, make_settings
from tests.support.dicom_series import ct_series, phantom, to_bytes
from tests.support.onnx_models import expected_labels


@pytest.fixture(scope="module")
def result(model_2c):
    hu = phantom((6, 40, 48), seed=3)
    hu[0] = -900.0  # an empty slice: never among the picked ones
    datasets = [pydicom.dcmread(io.BytesIO(to_bytes(d))) for d in ct_series(hu)]
    runtime = ModelRuntime.load(model_2c, providers=["CPUExecutionProvider"])
    res = segment_datasets(datasets, runtime, make_settings(model_2c), reference=expected_labels(hu, THRESHOLDS_2C))
    np.testing.assert_array_equal(res.labels, expected_labels(hu, THRESHOLDS_2C, CLIP_2C))
    return res, hu


def _expected_contour(mask: np.ndarray) -> np.ndarray:
    # independent of the module: scipy erosion with a 4-neighbourhood, outside the image counts as background
    cross = ndimage.generate_binary_structure(2, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def test_contour_pixels_are_where_the_mask_border_is(result):
    res, hu = result
    png, layout = render_preview(res, max_slices=3, columns=2, tile_px=100)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert picture.shape == (layout.height, layout.width, 3)

    counts = (res.labels > 0).reshape(len(res.labels), -1).sum(axis=1)
    top3 = sorted(np.argsort(-counts, kind="stable")[:3].tolist())
    assert [t.z for t in layout.tiles] == top3 and 0 not in top3

    h, w = res.labels.shape[1:]
    lo, hi = CLIP_2C
    for tile in layout.tiles:
        assert tile.scale == 100 // 48
        region = picture[tile.y0 : tile.y0 + h * tile.scale, tile.x0 : tile.x0 + w * tile.scale]
        # every scaled pixel of a source pixel has one colour
        for dy in range(tile.scale):
            np.testing.assert_array_equal(
                region[dy :: tile.scale, dy :: tile.scale], region[:: tile.scale, :: tile.scale]
            )
        pixels = region[:: tile.scale, :: tile.scale].astype(int)
        labels = res.labels[tile.z]
        painted = np.zeros((h, w), bool)
        for value in (1, 2):
            expected = _expected_contour(labels == value)
            is_colour = np.all(pixels == class_colour(value), axis=-1)
            np.testing.assert_array_equal(is_colour, expected, err_msg=f"slice {tile.z} class {value}")
            painted |= expected
        # elsewhere: the CT in the card's window, grey
        grey = np.round(np.clip((hu[tile.z] - lo) / (hi - lo), 0, 1) * 255)
        np.testing.assert_array_equal(pixels[~painted][:, 0], grey[~painted])
        assert np.all(pixels[~painted][:, 0] == pixels[~painted][:, 2])


def test_legend_band_has_class_colours(result):
    res, _ = result
    png, layout = render_preview(res, max_slices=2, columns=2, tile_px=96)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    tiles_h = max(t.y0 for t in layout.tiles) + res.labels.shape[1] * layout.tiles[0].scale
    legend = picture[tiles_h:].reshape(-1, 3)
    for value in (1, 2):  # anti-aliased text: some pixels close to the class colour
        assert (np.abs(legend.astype(int) - class_colour(value)).sum(axis=1) < 40).any()


def test_segment_answers_png(make_client, model_2c):
    hu = phantom((4, 32, 32), seed=1)
    files = [("dicom", (f"{i}.dcm", to_bytes(d), "application/dicom")) for i, d in enumerate(ct_series(hu))]
    client = make_client(model_2c)
    r = client.post("/segment", files=files, headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG" and image.width == 3 * (256 // 32) * 32
