"""Parity of training, evaluation, calibration and serving: the same box gives the identical crop, the
same image the identical normalised input (issue 8).

Training crops come from ``PatchDataset`` (validation mode: no jitter, flips or noise; int8
calibration draws the same crops through ``model_export.data.load_patches``), evaluation crops from
``model_export.evaluation.target_region`` / ``crop_region``, serving crops are the batches the
service really feeds ONNX Runtime in box mode (recorded on a real session of a threshold model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from msdn_core.boxes import SliceBox
from msdn_core.card import Normalization
from service.inference import segment_boxes, segment_slices
from service.model import ModelRuntime
from tests.support.onnx_models import threshold_model

torch = pytest.importorskip("torch")  # training and evaluation sides need torch; the serve venv skips

from model_export.data.manifest import Case  # noqa: E402
from model_export.data.sampling import PatchDataset, _Volume, component_boxes  # noqa: E402
from model_export.evaluation import crop_region, predict_slices, target_region  # noqa: E402

CLIP = (-1000.0, 1000.0)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> ModelRuntime:
    path = tmp_path_factory.mktemp("parity") / "threshold.onnx"
    threshold_model(path, thresholds_hu=(0.0,), classes=["tissue"], mean=-200.0, std=300.0, clip=CLIP)
    return ModelRuntime.load(path, providers=["CPUExecutionProvider"], batch_size=4)


def _record(runtime: ModelRuntime) -> list[np.ndarray]:
    """The batches the service feeds the session (the session itself really runs)."""
    seen: list[np.ndarray] = []
    run = ModelRuntime.run

    def recording(batch: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
        seen.append(np.array(batch))
        return run(runtime, batch, **options)

    runtime.run = recording  # type: ignore[method-assign]
    return seen


def _image(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1500.0, 1500.0, size=shape).astype(np.float32)  # beyond the clip on both sides


def _training_crop(image: np.ndarray, mask: np.ndarray, z: int, norm: Normalization, patch: int) -> np.ndarray:
    case = Case("c", "val", Path("unused.nii.gz"), Path("unused-mask.nii.gz"), [])
    vol = _Volume(case, image, mask, float(image.min()), {z: component_boxes(mask[z])})
    dataset = PatchDataset([case], normalization=norm, patch_size=patch, augment=False, volumes={"c": vol})
    return dataset[0]["image"].numpy()[0]


# (volume shape, target rows, target cols): inside, at each border, and an image smaller than the patch.
CASES = [
    ((3, 64, 80), (20, 30), (30, 40)),
    ((3, 64, 80), (1, 9), (70, 79)),  # top-right corner: the service used to pad ~25 px outside
    ((3, 64, 80), (55, 64), (0, 6)),  # bottom-left, touching the border
    ((3, 20, 80), (4, 12), (60, 75)),  # image rows < patch: padded along rows only
]


@pytest.mark.parametrize(("shape", "rows", "cols"), CASES)
def test_same_box_gives_the_identical_crop_in_training_evaluation_and_serving(runtime, shape, rows, cols):
    spec = runtime.card.input
    patch = int(spec.patch_size[0])
    image = _image(shape)
    mask = np.zeros(shape, np.uint8)
    z = 1
    mask[z, rows[0] : rows[1], cols[0] : cols[1]] = 1
    box = [cols[0], rows[0], cols[1], rows[1]]

    train = _training_crop(image, mask, z, spec.normalization, patch)

    zs, ys, xs = target_region(mask, patch_size=patch, margin=0, z_margin=0)
    evaluation = spec.normalise(crop_region(image, (zs, ys, xs), float(image.min()))[z - zs.start])

    seen = _record(runtime)
    segment_boxes(runtime, image, [SliceBox(z, *map(float, box))])
    assert len(seen) == 1
    serving = seen[0][0, 0]

    assert train.shape == evaluation.shape == serving.shape == (patch, patch)
    np.testing.assert_array_equal(train, serving)
    np.testing.assert_array_equal(evaluation, serving)
    window = spec.crop_window(box, shape[1:])
    expected = spec.normalise(window.extract(image[z], spec.pad_value(image)))
    np.testing.assert_array_equal(serving, expected)
    # Inside the image whenever the image is at least a patch: no padding at the borders.
    if shape[1] >= patch and shape[2] >= patch:
        assert 0 <= window.y0 <= shape[1] - patch and 0 <= window.x0 <= shape[2] - patch


def test_same_normalisation_in_training_evaluation_and_serving(runtime):
    spec = runtime.card.input
    image = _image((2, 32, 48), seed=3)
    by_hand = (np.clip(image, *CLIP) - np.float32(-200.0)) / np.float32(300.0)
    training = spec.normalization.apply(image)  # PatchDataset and load_patches (calibration) call this
    np.testing.assert_array_equal(training, spec.normalise(image))
    np.testing.assert_allclose(training, by_hand, rtol=1e-6)

    seen = _record(runtime)
    segment_slices(runtime, image)
    np.testing.assert_array_equal(np.concatenate(seen)[:, 0], training)

    captured: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def segment(self, x: torch.Tensor) -> torch.Tensor:
            captured.append(x.clone())
            return torch.zeros((x.shape[0], 2, *x.shape[2:]))

    predict_slices(Recorder(), image, spec.normalization)  # evaluation's model input
    np.testing.assert_array_equal(torch.cat(captured).numpy()[:, 0], training)


# ------------------------------------------------------------------ the model grid (msdn_core.grid)


@pytest.mark.parametrize("flip", [False, True], ids=["as-stored", "x-flipped"])
def test_training_crop_equals_serving_crop_on_the_model_grid_for_a_fine_series(tmp_path, flip):
    """A 0.7 mm series (and a copy stored with its columns reversed, as dcm2niix may write it) is brought
    onto a 1.25 mm model grid: the training patch and the batch the service feeds ONNX Runtime for the
    same target are identical, and both equal the model-grid image cropped by hand."""
    from model_export.data.volumes import write_nifti
    from msdn_core import geometry
    from msdn_core.grid import ModelGrid
    from msdn_core.readers.nifti import read_nifti_file
    from service.pipeline import segment_image
    from service.settings import Settings

    grid = ModelGrid((1.25, 1.25), "LPS")
    model_path = tmp_path / "grid.onnx"
    threshold_model(
        model_path, thresholds_hu=(0.0,), mean=-200.0, std=300.0, clip=CLIP, spacing_mm=(1.25, 1.25), orientation="LPS"
    )
    runtime = ModelRuntime.load(model_path, providers=["CPUExecutionProvider"], batch_size=4)
    image = _image((3, 120, 110), seed=5)
    mask = np.zeros(image.shape, np.uint8)
    mask[1, 40:52, 60:75] = 1
    affine = geometry.axis_affine((2.5, 0.7, 0.7), origin=(-30.0, -40.0, 12.0))
    if flip:
        affine = affine.copy()
        affine[:3, 3] += affine[:3, 0] * (image.shape[2] - 1)
        affine[:3, 0] *= -1
        image, mask = image[:, :, ::-1].copy(), mask[:, :, ::-1].copy()
    write_nifti(tmp_path / "ct.nii.gz", image, affine=geometry.lps_to_ras(affine))
    write_nifti(tmp_path / "mask.nii.gz", mask, affine=geometry.lps_to_ras(affine))
    case = Case("c", "val", tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz", [])

    dataset = PatchDataset(
        [case], normalization=runtime.card.input.normalization, patch_size=32, augment=False, grid=grid
    )
    assert len(dataset) == 1
    train = dataset[0]["image"].numpy()[0]
    z = dataset[0]["slice"]
    (target,) = dataset.volumes[0].targets[z][0]  # the model-grid mask's component box on that slice

    native = read_nifti_file(tmp_path / "ct.nii.gz")
    transform = grid.transform_for(native)
    x1, y1, _, x2, y2, _ = transform.box_to_native([target[0], target[1], z, target[2], target[3], z + 1])
    seen = _record(runtime)
    segment_image(native, runtime, Settings(model_path=model_path), boxes=[SliceBox(1, x1, y1, x2, y2)], mode="boxes")
    assert len(seen) == 1
    serving = seen[0][0, 0]
    np.testing.assert_array_equal(train, serving)

    model_image = transform.to_model(native.array)
    window = runtime.card.input.crop_window(list(target), model_image.shape[1:])
    np.testing.assert_array_equal(serving, runtime.card.input.normalise(window.extract(model_image[z], 0.0)))
    assert transform.shape == (3, 67, 62)  # 120 x 0.7 / 1.25 = 67.2, 110 x 0.7 / 1.25 = 61.6
