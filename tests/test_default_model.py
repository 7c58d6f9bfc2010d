"""The main job's default model (models/default.onnx) on the bundled sample series (samples/).

Checks what the README promises: the committed model loads in the service (its sidecar SHA-256
matches), segments the sample over HTTP, and its Dice against the sample's ground truth, computed
here independently from the returned mask, is what the service reports and is useful.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from msdn_core.digest import file_sha256
from msdn_core.onnx_model import SIDECAR_SHA_KEY, read_model_card, sidecar_path
from service.main import create_app
from service.outputs.rle import decode
from service.providers import cpu_has_vnni
from tests.service.helpers import make_settings

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default.onnx"
SAMPLE = ROOT / "samples" / "chest_case"
MASK = ROOT / "samples" / "chest_case_mask.nii.gz"
#: the sample's two nodules (samples/README.md)
BOXES = '[{"box": [96, 136, 27, 106, 145, 38]}, {"box": [29, 92, 12, 46, 102, 29]}]'
#: measured with the committed model (README) on the model grid (the card's 1.2539 mm, LPS), per
#: precision: whole slices, mode auto (proposals confirmed by the segmentation at each card's calibrated
#: threshold; fp32 at 0.0958: one nodule (0.235) and one false positive (0.110) kept, the other nodule
#: under it; int8 at its own 0.0956 the same two), box prompts. The int8 numbers are those of ONNX
#: Runtime's u8s8 kernels (CPUs without VNNI, where ``MSDN_PRECISION=auto`` serves fp32).
MEASURED = {
    "fp32": {"slices": 0.599, "auto": 0.469, "boxes": 0.772},
    "int8": {"slices": 0.584, "auto": 0.469, "boxes": 0.773},
}


def test_committed_model_is_self_describing_and_matches_its_sidecar():
    card = read_model_card(MODEL)
    assert card.method == "msdn" and [c.name for c in card.classes] == ["nodule"]
    assert card.input.clip == [-1000.0, 400.0] and card.input.size_multiple == 16
    raw = json.loads(sidecar_path(MODEL).read_text())
    assert raw["outputs"]["detection"] == {"scores": "det_scores", "boxes": "det_boxes"}
    arch, training = raw["architecture"], raw["training"]
    assert arch["detection_strides"] == [8, 4, 2, 1] and len(arch["anchor_shapes"]) == 4
    assert training["anchors"]["recall"] >= 0.95 and training["selection"] == "series"
    assert MODEL.stat().st_size < 25_000_000
    # the proposal operating point, calibrated on 24 held-out series (scripts/build_default_model.sh)
    calibration = raw["detection"]["calibration"]
    assert 0.0 < raw["detection"]["score_threshold"] < 1.0 and calibration["series"] == 24
    assert calibration["fp_per_scan"] <= calibration["fp_per_scan_target"] == 1.0
    assert raw["detection"]["confirmation"] == "segmentation" and calibration["precision"] == "fp32"
    # the int8 variant: calibrated on its own scores; its sensitivity there is fp32's (auto serves it
    # on a VNNI CPU: tests/service/test_precision.py)
    int8 = json.loads(sidecar_path(MODEL.with_name("default.int8.onnx")).read_text())
    assert int8["detection"]["calibration"]["precision"] == "int8"
    assert int8["detection"]["confirmation"] == "segmentation"
    assert int8["checkpoint_sha256"] == raw["checkpoint_sha256"]
    sidecar = json.loads(sidecar_path(MODEL).read_text())
    assert sidecar[SIDECAR_SHA_KEY] == file_sha256(MODEL)


@pytest.fixture(scope="module")
def client():
    app = create_app(make_settings(MODEL, precision="fp32"))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module", params=["fp32", "int8"])
def served(request):
    """A client serving the committed model at one precision, and that precision."""
    app = create_app(make_settings(MODEL, precision=request.param))
    with TestClient(app) as c:
        assert c.get("/v1/model").json()["precision"] == request.param
        yield c, request.param


def _files():
    return [("dicom", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(SAMPLE.glob("*.dcm"))]


def _reference_zyx() -> np.ndarray:
    # NIfTI (x, y, z) in the DICOM series' geometry -> (Z, Y, X) of the sorted series
    return np.asarray(nib.load(str(MASK)).dataobj).transpose(2, 1, 0)


@pytest.mark.parametrize("mode", ["slices", "auto", "boxes"])
def test_default_model_segments_the_sample(served, mode):
    client, precision = served
    data = {"format": "json"}
    if mode == "boxes":
        data["boxes"] = BOXES
    elif mode == "slices":
        data["mode"] = "slices"
    files = _files() + [("reference", (MASK.name, MASK.read_bytes(), "application/gzip"))]
    r = client.post("/segment", files=files, data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    mask = decode(body["mask"])
    ref = _reference_zyx()
    assert mask.shape == ref.shape == (40, 256, 256)
    pred, gt = mask == 1, ref == 1
    dice = 2 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum())
    assert body["metrics"]["classes"][0]["dice"] == pytest.approx(dice, abs=1e-6)
    if precision == "int8" and cpu_has_vnni():
        # with VNNI ONNX Runtime's int8 convolutions take another kernel path, whose rounding differs:
        # not measured for this card (no VNNI machine in that session), so the prompted and whole-slice
        # Dice loosely, and auto's only by the checks below
        if mode != "auto":
            assert dice == pytest.approx(MEASURED[precision][mode], abs=0.1), dice
    else:
        assert dice == pytest.approx(MEASURED[precision][mode], abs=0.02), dice
    assert body["mode"] == {"slices": "slices", "auto": "proposals", "boxes": "boxes"}[mode]
    if mode == "auto":  # the card's operating point: confirmation by the segmentation
        assert body["components"] and all(
            c["score"] == pytest.approx(c["detection_score"] * c["segmentation_score"]) for c in body["components"]
        )


def _reoriented_references(tmp: Path) -> dict[str, tuple[str, bytes]]:
    """The sample's mask stored as other converters write it: same voxels in space, other voxel order."""
    import gzip

    import nrrd

    img = nib.load(str(MASK))
    data, affine = np.asarray(img.dataobj), img.affine.copy()
    out = {}
    # one voxel axis (y) reversed, the affine adjusted: new j' = ny - 1 - j
    ny = data.shape[1]
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, ny - 1
    flipped = nib.Nifti1Image(np.ascontiguousarray(data[:, ::-1, :]), affine @ flip)
    out["flipped_y.nii.gz"] = gzip.compress(flipped.to_bytes())
    # x and z swapped and z reversed
    swap = np.zeros((4, 4))
    swap[0, 2], swap[2, 0], swap[1, 1], swap[3, 3] = -1.0, 1.0, 1.0, 1.0
    swap[0, 3] = data.shape[0] - 1  # old i = nx - 1 - k'
    permuted = np.ascontiguousarray(data.transpose(2, 1, 0)[:, :, ::-1])
    out["permuted.nii.gz"] = gzip.compress(nib.Nifti1Image(permuted, affine @ swap).to_bytes())
    # NRRD in LPS space (3D Slicer's default), axes reversed in x: LPS directions are RAS with x, y negated
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    flip_x = np.eye(4)
    flip_x[0, 0], flip_x[0, 3] = -1.0, data.shape[0] - 1
    lps = lps @ flip_x
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]}
    nrrd.write(str(tmp / "ref.nrrd"), np.ascontiguousarray(data[::-1]), header, index_order="F")
    out["reoriented.nrrd"] = (tmp / "ref.nrrd").read_bytes()
    return out


def test_reoriented_references_give_the_same_dice(client, tmp_path):
    """The issue's case: a reference stored with another voxel order must score as the original, not 0.0."""
    files = _files()
    prompt = {"boxes": BOXES}
    original = client.post("/segment", files=files + [("reference", (MASK.name, MASK.read_bytes()))], data=prompt)
    assert original.status_code == 200, original.text
    expected = original.json()["metrics"]["classes"][0]
    assert expected["dice"] == pytest.approx(MEASURED["fp32"]["boxes"], abs=0.02)
    for name, data in _reoriented_references(tmp_path).items():
        r = client.post("/segment", files=files + [("reference", (name, data))], data=prompt)
        assert r.status_code == 200, (name, r.text)
        got = r.json()["metrics"]["classes"][0]
        assert got["dice"] == expected["dice"] and got["reference_volume_ml"] == expected["reference_volume_ml"], name


def test_reference_on_another_grid_is_refused_naming_both(client):
    img = nib.load(str(MASK))
    shifted = img.affine.copy()
    shifted[:3, 3] += [0.6, 0.0, 0.0]  # half a voxel off (1.2713 mm pixels)
    data = nib.Nifti1Image(np.asarray(img.dataobj), shifted).to_bytes()
    r = client.post("/segment", files=_files() + [("reference", ("shifted.nii", data))])
    assert r.status_code == 422 and r.json()["code"] == "reference_mismatch"
    detail = r.json()["detail"]
    assert detail["reference"]["origin_lps_mm"][0] == pytest.approx(detail["input"]["origin_lps_mm"][0] - 0.6, abs=1e-3)
    assert "is not the input's grid" in r.json()["message"]


def _sample_hu_zyx() -> np.ndarray:
    """The sample's HU in (Z, Y, X) of the sorted series, read with pydicom alone (not the service's reader)."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in SAMPLE.glob("*.dcm")]
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
    datasets.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]).astype(
        np.int16
    )


def _stored_as(voxels_xyz: np.ndarray, affine: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """``voxels_xyz`` (NIfTI order) and its affine stored another way: same voxels in space."""
    nx, ny, nz = voxels_xyz.shape
    change = np.eye(4)
    if how == "flip_x":
        change[0, 0], change[0, 3] = -1.0, nx - 1
        return np.ascontiguousarray(voxels_xyz[::-1]), affine @ change
    if how == "flip_z":
        change[2, 2], change[2, 3] = -1.0, nz - 1
        return np.ascontiguousarray(voxels_xyz[:, :, ::-1]), affine @ change
    if how == "swap_xy":  # new (i', j') = old (j, i)
        change[:2, :2] = [[0.0, 1.0], [1.0, 0.0]]
        return np.ascontiguousarray(voxels_xyz.transpose(1, 0, 2)), affine @ change
    raise AssertionError(how)


def _back_zyx(mask_zyx: np.ndarray, how: str) -> np.ndarray:
    """A mask answered for an upload stored ``how``, in the (Z, Y, X) order of the DICOM series."""
    xyz = mask_zyx.transpose(2, 1, 0)
    xyz = {"flip_x": xyz[::-1], "flip_z": xyz[:, :, ::-1], "swap_xy": xyz.transpose(1, 0, 2)}[how]
    return xyz.transpose(2, 1, 0)


@pytest.mark.parametrize("mode", ["slices", "auto"])
def test_the_same_ct_stored_otherwise_gives_the_same_mask(client, mode):
    """Issue 22's converter case: the sample as a NIfTI with an axis flipped, swapped or z reversed (as
    dcm2niix or another tool may write it) gives the mask of the DICOM upload, voxel for voxel up to ties, because
    every input is brought onto the card's grid (orientation LPS) before the model runs."""
    from scipy import ndimage

    data = {"format": "json", "mode": mode}
    r = client.post("/segment", files=_files(), data=data)
    assert r.status_code == 200, r.text
    expected = decode(r.json()["mask"])
    assert r.json()["input"]["model_grid"]["resampled"] == [False, True, True]  # 1.27 mm pixels to 1.2539
    assert expected.sum() > 0
    affine = nib.load(str(MASK)).affine  # the series' geometry as NIfTI (RAS) holds it
    hu_xyz = _sample_hu_zyx().transpose(2, 1, 0)
    for how in ("flip_x", "flip_z", "swap_xy"):
        voxels, stored_affine = _stored_as(hu_xyz, affine, how)
        upload = nib.Nifti1Image(voxels, stored_affine).to_bytes()
        r = client.post("/segment", files=[("volume", (f"{how}.nii", upload))], data=data)
        assert r.status_code == 200, (how, r.text)
        got = _back_zyx(decode(r.json()["mask"]), how)
        grid = r.json()["input"]["model_grid"]
        assert (grid["flipped"], grid["permuted"]) == {
            "flip_x": ([True, False, False], False),
            "flip_z": ([False, False, True], False),
            "swap_xy": ([False, False, False], True),
        }[how], how
        assert got.shape == expected.shape
        # the same voxels up to a few on the resampled grid's ties (interpolation weights of exactly 0.5
        # rounded the other way when the grid runs the other way): without the grid, agreement Dice 0.03
        agreement = 2 * np.logical_and(got, expected).sum() / (got.astype(bool).sum() + expected.astype(bool).sum())
        assert agreement >= 0.995 and (got != expected).sum() <= 0.005 * expected.astype(bool).sum(), (how, agreement)
        assert ndimage.label(got)[1] == ndimage.label(expected)[1], how


def test_the_sample_at_double_resolution_gives_the_same_nodules(client):
    """Issue 22's scale case: the sample at twice the in-plane resolution (each pixel split in four, 0.64 mm,
    512 x 512, as NIfTI) runs on the card's 1.2539 mm grid as the original does; with the box prompts
    (their coordinates doubled) the answer, brought back to 512 x 512, agrees with the native answer
    and the reference. Without the grid the model saw nodules at twice the scale it learned."""
    from scipy import ndimage

    native = client.post("/segment", files=_files(), data={"format": "json", "boxes": BOXES})
    assert native.status_code == 200, native.text
    expected = np.repeat(np.repeat(decode(native.json()["mask"]), 2, axis=1), 2, axis=2)
    img = nib.load(str(MASK))
    half = np.diag([0.5, 0.5, 1.0, 1.0])
    half[:2, 3] = -0.25  # new voxel i' = 2 i + 0.5 - 0.5: centres a quarter of an old pixel off
    hu = np.repeat(np.repeat(_sample_hu_zyx(), 2, axis=1), 2, axis=2)
    upload = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), img.affine @ half).to_bytes()
    boxes = json.dumps(
        [{"box": [2 * v if i % 3 != 2 else v for i, v in enumerate(b["box"])]} for b in json.loads(BOXES)]
    )
    r = client.post("/segment", files=[("volume", ("double.nii", upload))], data={"format": "json", "boxes": boxes})
    assert r.status_code == 200, r.text
    got = decode(r.json()["mask"])
    assert got.shape == (40, 512, 512) and r.json()["input"]["model_grid"]["shape"][1:] == [260, 260]
    agreement = 2 * np.logical_and(got, expected).sum() / (got.astype(bool).sum() + expected.astype(bool).sum())
    ref = np.repeat(np.repeat(_reference_zyx(), 2, axis=1), 2, axis=2) == 1
    dice = 2 * np.logical_and(got == 1, ref).sum() / ((got == 1).sum() + ref.sum())
    # measured: agreement 0.931, Dice 0.755 (native 0.772)
    assert agreement >= 0.9 and dice >= MEASURED["fp32"]["boxes"] - 0.05, (agreement, dice)
    assert ndimage.label(got)[1] == ndimage.label(expected)[1] == 2


def test_the_sample_seg_says_what_it_found(client):
    """The default card codes its class (models/default.class-codes.json, written by ``msdn classes``): the
    SEG's segment is a SNOMED CT nodule of the lung in orange, read back with highdicom."""
    import io

    import highdicom as hd
    import pydicom

    data = {"boxes": BOXES}
    mask = decode(client.post("/segment", files=_files(), data={**data, "format": "json"}).json()["mask"])
    r = client.post("/segment", files=_files(), data={**data, "format": "dicom-seg"})
    assert r.status_code == 200, r.text
    seg = hd.seg.segread(io.BytesIO(r.content))
    item = seg.SegmentSequence[0]
    coded = {
        key: (item[key][0].CodeValue, item[key][0].CodingSchemeDesignator)
        for key in (
            "SegmentedPropertyCategoryCodeSequence",
            "SegmentedPropertyTypeCodeSequence",
            "AnatomicRegionSequence",
        )
    }
    assert coded == {
        "SegmentedPropertyCategoryCodeSequence": ("49755003", "SCT"),
        "SegmentedPropertyTypeCodeSequence": ("27925004", "SCT"),
        "AnatomicRegionSequence": ("39607008", "SCT"),
    }
    assert list(item.RecommendedDisplayCIELabValue) == list(hd.color.CIELabColor.from_rgb(255, 140, 0).value)
    assert item.SegmentLabel == "nodule"
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in SAMPLE.glob("*.dcm")]
    normal = np.cross(*np.reshape(np.asarray(sources[0].ImageOrientationPatient, float), (2, 3)))
    sources.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    back = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in sources], combine_segments=True, assert_missing_frames_are_empty=True
    )
    assert np.array_equal(back, mask) and mask.any()


def _dciodvfy(data: bytes, tmp: Path) -> list[str]:
    """dciodvfy's warning and error lines for a DICOM file (dicom3tools; scripts/install_dicom3tools.sh)."""
    import os
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        if os.environ.get("MSDN_REQUIRE_DCIODVFY") == "1":
            pytest.fail("dciodvfy is required here (MSDN_REQUIRE_DCIODVFY=1) but not installed")
        pytest.skip("dciodvfy (dicom3tools) not installed: scripts/install_dicom3tools.sh")
    path = tmp / "object.dcm"
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return sorted(line for line in (run.stdout + run.stderr).splitlines() if line.startswith(("Error", "Warning")))


def test_dciodvfy_finds_nothing_in_the_sample_seg_that_its_source_lacks(client, tmp_path):
    """David Clunie's validator on the default model's SEG of the sample: every error or warning it
    reports is one it reports for the source CT too (the synthetic sample's de-identified patient
    module); none comes from msdn (the private 99MSDN code it warned about is gone: SNOMED CT codes)."""
    r = client.post("/segment", files=_files(), data={"format": "dicom-seg", "boxes": BOXES})
    assert r.status_code == 200, r.text
    seg = _dciodvfy(r.content, tmp_path)
    source = _dciodvfy(sorted(SAMPLE.glob("*.dcm"))[0].read_bytes(), tmp_path)
    assert set(seg) <= set(source), sorted(set(seg) - set(source))
    assert not any("99MSDN" in line or "Warning" in line for line in seg), seg
