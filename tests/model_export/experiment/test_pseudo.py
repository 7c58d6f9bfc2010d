"""Pseudo-masks from boxes: filled boxes by hand, refinement with a model whose prediction is known."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from torch import nn

from model_export.data.manifest import Case, SliceBox
from model_export.data.volumes import read_volume, write_nifti
from model_export.experiment.pseudo import RefineStats, box_mask, box_slices, pseudo_cases, refine_mask
from msdn_core.card import Normalization


def test_box_slices_and_mask_by_hand():
    assert box_slices((1.5, 2.0, 4.2, 5.0), 10, 10) == (slice(2, 5), slice(1, 5))
    assert box_slices((-3, -1, 20, 4), 6, 8) == (slice(0, 4), slice(0, 8))
    m = box_mask((3, 6, 6), [SliceBox(1, 1.0, 2.0, 3.0, 5.0, label=1), SliceBox(2, 0.0, 0.0, 1.0, 1.0, label=2)])
    expected = np.zeros((3, 6, 6), np.uint8)
    expected[1, 2:5, 1:3] = 1
    expected[2, 0, 0] = 2
    np.testing.assert_array_equal(m, expected)
    assert box_mask((2, 4, 4), [SliceBox(5, 0, 0, 2, 2, label=1)]).sum() == 0  # slice outside: ignored


class BrightModel(nn.Module):
    """Predicts class 1 wherever the (normalised) input exceeds 0: a model with a known answer."""

    def segment(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 2, H, W)
        fg = (x[:, :1] > 0).float()
        return torch.cat([1 - fg, fg], dim=1)


def test_refine_keeps_prediction_inside_box_and_falls_back():
    image = np.full((2, 40, 40), -1.0, np.float32)
    image[0, 10:14, 12:20] = 1.0  # bright blob on slice 0, partly outside the box below
    boxes = [SliceBox(0, 10.0, 8.0, 16.0, 16.0, label=1), SliceBox(1, 5.0, 5.0, 9.0, 7.0, label=1)]  # slice 1: no blob
    stats = RefineStats()
    out = refine_mask(BrightModel(), image, boxes, Normalization(), patch_size=16, stats=stats)
    expected = np.zeros_like(out)
    expected[0, 10:14, 12:16] = 1  # blob clipped to the box (x < 16)
    expected[1, 5:7, 5:9] = 1  # empty prediction: filled box kept
    np.testing.assert_array_equal(out, expected)
    assert stats.boxes == 2 and stats.fallback_boxes == 1
    assert stats.mean_fill == (16 / 48 + 1.0) / 2


def test_pseudo_cases_write_masks_on_the_image_grid(tmp_path):
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    affine[:3, 3] = [5.0, -3.0, 10.0]
    image = np.zeros((2, 8, 8), np.float32)
    write_nifti(tmp_path / "img.nii.gz", image, affine=affine)
    weak = Case("w", "train", tmp_path / "img.nii.gz", None, [SliceBox(1, 2.0, 3.0, 5.0, 4.0, label=1)])
    strong = Case("s", "train", tmp_path / "img.nii.gz", tmp_path / "img.nii.gz")
    out, stats = pseudo_cases([strong, weak], tmp_path / "pseudo", kind="box")
    assert out[0] is strong and out[1].strong and not out[1].boxes
    vol = read_volume(out[1].mask)
    np.testing.assert_allclose(vol.affine, read_volume(tmp_path / "img.nii.gz").affine)  # the image's grid
    np.testing.assert_allclose(nib.load(str(out[1].mask)).affine, affine)  # as NIfTI (RAS) stores it
    assert vol.array.sum() == 3 and vol.array[1, 3, 2:5].tolist() == [1, 1, 1]
    assert stats.boxes == 1
