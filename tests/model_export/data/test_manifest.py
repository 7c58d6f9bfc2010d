"""Manifest parsing and file validation: every error names the case and says what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from model_export.data.manifest import (
    Case,
    ManifestError,
    SliceBox,
    boxes_from_mask,
    load_manifest,
    parse_manifest,
)
from model_export.data.volumes import write_nifti

SHAPE = (4, 8, 10)  # Z, Y, X
SPACING = (2.0, 0.5, 0.5)
CLASSES = [{"value": 1, "name": "nodule"}, {"value": 2, "name": "vessel"}]


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[1, 2:5, 3:7] = 1
    m[2, 0:2, 8:10] = 2
    return m


def _write(tmp_path: Path, cases: list[dict], *, classes=CLASSES, **extra) -> Path:
    data = {"format_version": 1, "name": "t", "classes": classes, "cases": cases, **extra}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_nifti(tmp_path / "img.nii.gz", rng.normal(size=SHAPE).astype(np.float32), spacing=SPACING)
    write_nifti(tmp_path / "mask.nii.gz", _mask(), spacing=SPACING)
    return tmp_path


def _strong(**kw) -> dict:
    return {"id": "c1", "split": "train", "image": "img.nii.gz", "mask": "mask.nii.gz", **kw}


def _weak(boxes, **kw) -> dict:
    return {"id": "w1", "split": "val", "image": "img.nii.gz", "boxes": boxes, **kw}


def test_valid_manifest_loads_with_paths_resolved(files: Path):
    path = _write(files, [_strong(), _weak([{"slice": 1, "box": [3, 2, 7, 5], "label": 2}])])
    m = load_manifest(path)
    assert m.num_classes == 2 and m.class_names == ["nodule", "vessel"]
    assert [c.id for c in m.split("train")] == ["c1"] and [c.id for c in m.split("val")] == ["w1"]
    assert m.split("test") == []
    strong, weak = m.cases
    assert strong.strong and not weak.strong
    assert strong.image == files / "img.nii.gz" and strong.mask == files / "mask.nii.gz"
    assert weak.boxes == [SliceBox(1, 3.0, 2.0, 7.0, 5.0, 2)]
    with pytest.raises(ValueError, match="split must be one of"):
        m.split("training")


def test_missing_manifest_and_bad_json(tmp_path: Path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "bad.json")


def test_missing_image_file_names_the_case(files: Path):
    path = _write(files, [_strong(id="case_7", image="missing.nii.gz")])
    with pytest.raises(ManifestError, match=r"case case_7: image: file not found: .*missing\.nii\.gz"):
        load_manifest(path)
    # structure-only loading does not open files
    assert load_manifest(path, check_files=False).cases[0].id == "case_7"


def test_missing_mask_file_names_the_case(files: Path):
    with pytest.raises(ManifestError, match=r"case c1: mask: file not found: .*gone\.nii\.gz"):
        load_manifest(_write(files, [_strong(mask="gone.nii.gz")]))


def test_missing_dicom_folder_content(files: Path):
    (files / "empty_series").mkdir()
    with pytest.raises(ManifestError, match="case c1: image: .*no DICOM images found"):
        load_manifest(_write(files, [_strong(image="empty_series")]))


def test_shape_mismatch(files: Path):
    write_nifti(files / "small.nii.gz", _mask()[:, :, :9], spacing=SPACING)
    with pytest.raises(ManifestError, match=r"case c1: mask shape \(4, 8, 9\) != image shape \(4, 8, 10\)"):
        load_manifest(_write(files, [_strong(mask="small.nii.gz")]))


def test_spacing_mismatch(files: Path):
    write_nifti(files / "m.nii.gz", _mask(), spacing=(2.5, 0.5, 0.5))
    message = r"case c1: mask spacing \(2.5, 0.5, 0.5\) != image spacing \(2.0, 0.5, 0.5\)"
    with pytest.raises(ManifestError, match=message):
        load_manifest(_write(files, [_strong(mask="m.nii.gz")]))


def test_origin_mismatch(files: Path):
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [0.0, 3.0, 0.0]  # shifted by 6 rows
    write_nifti(files / "m.nii.gz", _mask(), affine=affine)
    with pytest.raises(
        ManifestError, match=r"case c1: mask geometry differs from the image: origin \[-?0.0, -3.0, 0.0\]"
    ):
        load_manifest(_write(files, [_strong(mask="m.nii.gz")]))


def test_orientation_mismatch(files: Path):
    affine = np.diag([-0.5, 0.5, 2.0, 1.0])  # x flipped, same spacing and origin
    write_nifti(files / "m.nii.gz", _mask(), affine=affine)
    with pytest.raises(ManifestError, match="case c1: mask geometry differs from the image: orientation"):
        load_manifest(_write(files, [_strong(mask="m.nii.gz")]))


def test_small_origin_rounding_is_accepted(files: Path):
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [0.01, -0.01, 0.0]  # < 0.1 voxel
    write_nifti(files / "m.nii.gz", _mask(), affine=affine)
    load_manifest(_write(files, [_strong(mask="m.nii.gz")]))


def test_mask_label_outside_classes(files: Path):
    m = _mask()
    m[0, 0, 0] = 3
    write_nifti(files / "m.nii.gz", m, spacing=SPACING)
    with pytest.raises(ManifestError, match=r"case c1: mask has labels \[3\] outside 0..2"):
        load_manifest(_write(files, [_strong(mask="m.nii.gz")]))
    # the same mask is fine with three classes
    classes = CLASSES + [{"value": 3, "name": "other"}]
    load_manifest(_write(files, [_strong(mask="m.nii.gz")], classes=classes))


def test_mask_negative_and_fractional_labels(files: Path):
    m = _mask().astype(np.int16)
    m[0, 0, 0] = -1
    write_nifti(files / "neg.nii.gz", m, spacing=SPACING)
    with pytest.raises(ManifestError, match=r"case c1: mask has labels \[-1\] outside 0..2"):
        load_manifest(_write(files, [_strong(mask="neg.nii.gz")]))
    f = _mask().astype(np.float32)
    f[0, 0, 0] = 0.5
    write_nifti(files / "frac.nii.gz", f, spacing=SPACING)
    with pytest.raises(ManifestError, match="case c1: mask has non-integer values"):
        load_manifest(_write(files, [_strong(mask="frac.nii.gz")]))


@pytest.mark.parametrize(
    ("box", "where"),
    [
        ({"slice": 0, "box": [5, 2, 11, 5]}, "box [5, 2, 11, 5] on slice 0"),  # x2 > W = 10
        ({"slice": 0, "box": [5, 2, 8, 9]}, "box [5, 2, 8, 9] on slice 0"),  # y2 > H = 8
        ({"slice": 0, "box": [-1, 2, 8, 5]}, "box [-1, 2, 8, 5] on slice 0"),
        ({"slice": 4, "box": [1, 1, 3, 3]}, "box [1, 1, 3, 3] on slice 4"),  # Z = 4
        ({"box3d": [1, 1, 2, 3, 3, 6]}, "box [1, 1, 3, 3] on slice 4"),  # expands to slices 2..5
    ],
)
def test_box_outside_image(files: Path, box: dict, where: str):
    message = rf"case w1: {re.escape(where)} is outside the image \(Z, Y, X\) = \(4, 8, 10\)"
    with pytest.raises(ManifestError, match=message):
        load_manifest(_write(files, [_weak([box])]))


def test_box_on_border_is_inside(files: Path):
    m = load_manifest(_write(files, [_weak([{"slice": 3, "box": [0, 0, 10, 8]}])]))
    assert m.cases[0].boxes[0] == SliceBox(3, 0.0, 0.0, 10.0, 8.0, 1)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ({"slice": 0, "box": [4, 2, 4, 5]}, r"boxes\[0\]: need x1 < x2 and y1 < y2, got \[4.0, 2.0, 4.0, 5.0\]"),
        ({"slice": 0, "box": [4, 5, 6, 5]}, r"boxes\[0\]: need x1 < x2 and y1 < y2"),
        ({"slice": 0, "box": [6, 2, 4, 5]}, r"boxes\[0\]: need x1 < x2 and y1 < y2"),
        ({"box3d": [1, 1, 2, 3, 3, 2]}, r"boxes\[0\]: z range \[2, 2\] must satisfy 0 <= z1 < z2"),
        ({"slice": 0, "box": [1, 2, 3]}, r"boxes\[0\].box must be \[x1, y1, x2, y2\]"),
        ({"slice": 0, "box": [1, 2, 3, "4"]}, r"boxes\[0\].box\[3\] must be a finite number, got '4'"),
        ({"box3d": [1, 1, 2, 3, 3]}, r"boxes\[0\].box must be \[x1, y1, x2, y2\] \(with 'slice'\) or \[x1, y1, z1"),
        ({"slice": -1, "box": [1, 1, 3, 3]}, r"boxes\[0\].slice must be a non-negative integer, got -1"),
        ({"slice": 1.5, "box": [1, 1, 3, 3]}, r"boxes\[0\].slice must be a non-negative integer, got 1.5"),
        ({"box": [1, 1, 3, 3]}, r"boxes\[0\]: a 2D box needs 'slice'"),
        ("[1, 1, 3, 3]", r"boxes\[0\] must be an object"),
    ],
)
def test_malformed_or_empty_box(tmp_path: Path, box, message: str):
    with pytest.raises(ManifestError, match=f"case w1: {message}"):
        load_manifest(_write(tmp_path, [_weak([box])]), check_files=False)


@pytest.mark.parametrize("label", [0, 3, -1, True, 1.0])
def test_box_label_outside_classes(tmp_path: Path, label):
    box = {"slice": 0, "box": [1, 1, 3, 3], "label": label}
    message = rf"case w1: boxes\[0\]: label must be a class value 1..2 or a class name, got {label!r}"
    with pytest.raises(ManifestError, match=message):
        load_manifest(_write(tmp_path, [_weak([box])]), check_files=False)


def test_box3d_expands_to_every_covered_slice(tmp_path: Path):
    m = load_manifest(_write(tmp_path, [_weak([{"box3d": [1, 2, 1, 5, 6, 3.5], "label": 2}])]), check_files=False)
    assert m.cases[0].boxes == [SliceBox(z, 1, 2, 5, 6, 2) for z in (1, 2, 3)]
    m = load_manifest(_write(tmp_path, [_weak([{"box3d": [0, 0, 0.5, 1, 1, 1.5]}])]), check_files=False)
    assert [b.z for b in m.cases[0].boxes] == [0, 1]


@pytest.mark.parametrize(
    ("cases", "message"),
    [
        ([], "manifest has no cases"),
        ([_strong(), _strong()], "case c1: duplicate id"),
        ([_strong(split="training")], "case c1: split must be one of"),
        ([_strong(image="")], "case c1: missing 'image'"),
        ([{"id": "c1", "split": "train", "image": "img.nii.gz"}], r"case c1: needs a 'mask' \(strong\) or 'boxes'"),
        ([_weak("not a list")], "case w1: 'boxes' must be a list"),
        (["c1"], "case #0: must be an object"),
    ],
)
def test_structural_errors(tmp_path: Path, cases, message: str):
    with pytest.raises(ManifestError, match=message):
        load_manifest(_write(tmp_path, cases), check_files=False)


def test_bad_classes_and_version(tmp_path: Path):
    with pytest.raises(ManifestError, match="classes must be objects with values 1..C"):
        load_manifest(_write(tmp_path, [_strong()], classes=[{"value": 2, "name": "x"}]), check_files=False)
    with pytest.raises(ManifestError, match="unsupported manifest format_version 2"):
        load_manifest(_write(tmp_path, [_strong()], format_version=2), check_files=False)
    with pytest.raises(ManifestError, match="manifest must be a JSON object"):
        parse_manifest([], root=tmp_path)  # type: ignore[arg-type]


def test_boxes_from_mask_hand_values():
    mask = np.zeros((3, 12, 25), np.uint8)
    mask[0, 5:8, 10:21] = 1  # the house-style example: columns 10..20, rows 5..7 -> [10, 5, 21, 8]
    mask[0, 0, 0] = 1  # a second component of the same class
    mask[1, 9:12, 22:25] = 2  # touches the bottom-right corner
    mask[1, 2:4, 2] = 1
    boxes = boxes_from_mask(mask)
    assert sorted(boxes, key=lambda b: (b.z, b.label, b.box)) == [
        SliceBox(0, 0.0, 0.0, 1.0, 1.0, 1),
        SliceBox(0, 10.0, 5.0, 21.0, 8.0, 1),
        SliceBox(1, 2.0, 2.0, 3.0, 4.0, 1),
        SliceBox(1, 22.0, 9.0, 25.0, 12.0, 2),
    ]
    assert boxes_from_mask(np.zeros((2, 4, 4), np.uint8)) == []


def test_boxes_from_mask_diagonal_pixels_are_separate_components():
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = 1  # 4-connectivity: two boxes
    assert sorted(b.box for b in boxes_from_mask(mask)) == [(0.0, 0.0, 1.0, 1.0), (1.0, 1.0, 2.0, 2.0)]


def test_as_weak_derives_boxes_from_the_mask(files: Path):
    case = Case("c1", "train", files / "img.nii.gz", files / "mask.nii.gz")
    weak = case.as_weak()
    assert not weak.strong and weak.mask is None and case.strong
    assert sorted(weak.boxes, key=lambda b: b.z) == [
        SliceBox(1, 3.0, 2.0, 7.0, 5.0, 1),
        SliceBox(2, 8.0, 0.0, 10.0, 2.0, 2),
    ]
    given = [SliceBox(0, 1.0, 1.0, 2.0, 2.0, 1)]
    assert Case("c2", "train", files / "img.nii.gz", files / "mask.nii.gz", given).as_weak().boxes == given


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])  # RLE, JPEG 2000 lossless
def test_manifest_may_point_at_compressed_dicom(tmp_path: Path, syntax: str):
    from model_export.data.volumes import read_volume
    from tests.support.dicom_series import ct_series, phantom, to_bytes

    hu = phantom((4, 32, 48))
    folder = tmp_path / "dicom"
    folder.mkdir()
    spacing, origin = (2.0, 0.5, 0.6), (-120.0, -110.0, 40.0)
    for i, ds in enumerate(ct_series(hu, spacing=spacing, origin=origin, transfer_syntax=syntax)):
        assert ds.file_meta.TransferSyntaxUID == syntax
        (folder / f"{i}.dcm").write_bytes(to_bytes(ds))
    # the mask on the same grid, its RAS affine written by hand: LPS diag(sx, sy, sz) at the origin, x and y negated
    ras = np.diag([-0.6, -0.5, 2.0, 1.0])
    ras[:3, 3] = [120.0, 110.0, 40.0]
    mask = (hu > 300).astype(np.uint8)
    write_nifti(tmp_path / "mask.nii.gz", mask, affine=ras)
    manifest = load_manifest(
        _write(tmp_path, [{"id": "c1", "split": "train", "image": "dicom", "mask": "mask.nii.gz"}], classes=CLASSES[:1])
    )
    image = read_volume(manifest.cases[0].image)
    np.testing.assert_array_equal(image.array, hu.astype(np.float32))
    np.testing.assert_allclose(image.affine_ras, ras, atol=1e-9)
