"""POST /segment through httpx (TestClient) on real DICOM files, synthetic series and real ONNX models."""

from __future__ import annotations

import gzip
import io
import json
import logging
import threading
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from service.outputs.rle import decode
from tests.service.helpers import CLIP_2C, THRESHOLD_HU, THRESHOLDS_2C, ct5n_paths, pydicom_file
from tests.support.dicom_series import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    ct_series,
    phantom,
    series_files,
    to_bytes,
    zip_bytes,
)
from tests.support.onnx_models import expected_labels


def dicom_parts(named: list[tuple[str, bytes]]) -> list:
    return [("dicom", (name, data, "application/dicom")) for name, data in named]


def ct5n_upload() -> list:
    return dicom_parts([(p.rsplit("/", 1)[-1], Path(p).read_bytes()) for p in ct5n_paths()])


def ct5n_hu() -> np.ndarray:
    """CT5N in HU, sorted by z, by pydicom alone (independent of the service's reader)."""
    datasets = sorted((pydicom.dcmread(p) for p in ct5n_paths()), key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([apply_modality_lut(d.pixel_array, d) for d in datasets])


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_ct5n_series_json_mask(client):
    r = client.post("/segment", files=ct5n_upload())
    assert r.status_code == 200, r.text
    body = r.json()
    expected = expected_labels(ct5n_hu(), (THRESHOLD_HU,))
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(decode(body["mask"]), expected)
    assert body["mode"] == "slices" and body["input"]["shape"] == [5, 16, 16]
    assert body["input"]["spacing"] == pytest.approx([2.5, 0.488281, 0.488281])
    assert body["classes"][0]["voxels"] == int(expected.sum())
    assert body["classes"][0]["volume_ml"] == pytest.approx(expected.sum() * 2.5 * 0.488281**2 / 1000)
    assert body["model"]["provider"] == "CPUExecutionProvider" and body["metrics"] is None
    assert sum(c["voxels"] for c in body["components"]) == int(expected.sum())


def test_zip_upload_equals_file_upload(client):
    archive = zip_bytes({f"CT5N/{p.rsplit('/', 1)[-1]}": Path(p).read_bytes() for p in ct5n_paths()})
    r = client.post("/segment", files=[("dicom", ("series.zip", archive, "application/zip"))])
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(decode(r.json()["mask"]), expected_labels(ct5n_hu(), (THRESHOLD_HU,)))


def test_jpeg2000_512_ct(client):
    path = pydicom_file("693_J2KI.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)[None]
    r = client.post("/segment", files=dicom_parts([("693_J2KI.dcm", Path(path).read_bytes())]))
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(decode(r.json()["mask"]), expected_labels(hu, (THRESHOLD_HU,)))


def test_reference_gives_hand_computed_dice(client):
    predicted = expected_labels(ct5n_hu(), (THRESHOLD_HU,))
    reference = predicted.copy()
    fg = np.argwhere(predicted == 1)
    for z, y, x in fg[:10]:
        reference[z, y, x] = 0  # 10 misses
    bg = np.argwhere(predicted == 0)
    for z, y, x in bg[:6]:
        reference[z, y, x] = 1  # 6 extra
    p, r_, inter = predicted.sum(), reference.sum(), (predicted & reference).sum()
    files = ct5n_upload() + [("reference", ("ref.npy", npy_bytes(reference), "application/octet-stream"))]
    r = client.post("/segment", files=files)
    assert r.status_code == 200, r.text
    metrics = r.json()["metrics"]
    assert metrics["classes"][0]["dice"] == pytest.approx(2 * inter / (p + r_))
    assert metrics["classes"][0]["iou"] == pytest.approx(inter / (p + r_ - inter))
    assert metrics["overall"]["dice"] == pytest.approx(2 * inter / (p + r_))
    assert metrics["mean_dice"] == pytest.approx(2 * inter / (p + r_))
    voxel_ml = 2.5 * 0.488281**2 / 1000
    assert metrics["classes"][0]["reference_volume_ml"] == pytest.approx(r_ * voxel_ml, rel=1e-5)
    assert metrics["classes"][0]["hd95_mm"] is not None and metrics["classes"][0]["hd95_mm"] >= 0


def test_dicom_seg_answer_reads_back_equal_to_the_json_mask(client):
    as_json = decode(client.post("/segment", files=ct5n_upload()).json()["mask"])
    r = client.post("/segment", files=ct5n_upload(), data={"format": "dicom-seg"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(r.content))
    sources = sorted((pydicom.dcmread(p) for p in ct5n_paths()), key=lambda d: float(d.ImagePositionPatient[2]))
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tissue"]
    back = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in sources], combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(back, as_json)


def test_seg_as_reference_gives_dice_one(client):
    seg = client.post("/segment", files=ct5n_upload(), data={"format": "dicom-seg"}).content
    files = ct5n_upload() + [("reference", ("ref.dcm", seg, "application/dicom"))]
    r = client.post("/segment", files=files)
    assert r.status_code == 200, r.text
    assert r.json()["metrics"]["classes"][0]["dice"] == pytest.approx(1.0)
    assert r.json()["metrics"]["overall"]["hd95_mm"] == pytest.approx(0.0)


def test_seg_of_another_series_is_refused_as_reference(client):
    other = ct_series(phantom((5, 16, 16)))
    seg = client.post("/segment", files=dicom_parts(series_files(other)), data={"format": "dicom-seg"}).content
    r = client.post("/segment", files=ct5n_upload() + [("reference", ("ref.dcm", seg, "application/dicom"))])
    assert r.status_code == 422 and r.json()["code"] == "reference_mismatch"
    assert "does not reference the input series" in r.json()["message"]


def test_dcmqi_style_seg_without_preserved_locations_is_matched_by_plane_position(client):
    seg = pydicom.dcmread(
        io.BytesIO(client.post("/segment", files=ct5n_upload(), data={"format": "dicom-seg"}).content)
    )
    for item in seg.PerFrameFunctionalGroupsSequence:  # as dcmqi / 3D Slicer write it
        for der in item.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                del src.SpatialLocationsPreserved
    files = ct5n_upload() + [("reference", ("ref.dcm", to_bytes(seg), "application/dicom"))]
    r = client.post("/segment", files=files)
    assert r.status_code == 200, r.text
    assert r.json()["metrics"]["classes"][0]["dice"] == pytest.approx(1.0)


def test_an_instance_uploaded_twice_is_dropped_and_counted(client):
    upload = ct5n_upload()
    r = client.post("/segment", files=upload + upload[:2])
    assert r.status_code == 200, r.text
    assert r.json()["input"]["duplicates_dropped"] == 2 and r.json()["input"]["shape"] == [5, 16, 16]
    once = client.post("/segment", files=upload).json()
    assert once["input"]["duplicates_dropped"] == 0 and once["mask"] == r.json()["mask"]


def test_two_different_instances_at_one_position_are_refused(client):
    datasets = ct_series(phantom((3, 16, 16)))
    extra = pydicom.dcmread(io.BytesIO(to_bytes(datasets[1])))
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    r = client.post("/segment", files=dicom_parts(series_files(datasets + [extra])))
    assert r.status_code == 422 and r.json()["code"] == "inconsistent_geometry"
    assert "duplicate slice positions" in r.json()["message"]


def test_gantry_tilted_series_is_resampled_and_its_seg_reads_back(client):
    datasets = ct_series(phantom((4, 32, 32)), spacing=(2.5, 0.75, 0.75))
    for z, ds in enumerate(datasets):  # each slice one row (0.75 mm) further along y: tilt atan(0.3)
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ds.ImagePositionPatient, float) + [0, z * 0.75, 0]]
    upload = dicom_parts(series_files(datasets))
    r = client.post("/segment", files=upload)
    assert r.status_code == 200, r.text
    assert r.json()["input"]["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.3)), abs=1e-3)
    seg = client.post("/segment", files=upload, data={"format": "dicom-seg"})
    assert seg.status_code == 200, seg.text
    back = client.post("/segment", files=upload + [("reference", ("ref.dcm", seg.content, "application/dicom"))])
    assert back.status_code == 200, back.text
    assert back.json()["metrics"]["classes"][0]["dice"] == pytest.approx(1.0)


def test_nifti_answer_overlays_the_dicom_input(client):
    r = client.post("/segment", files=ct5n_upload(), headers={"Accept": "application/gzip"})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="mask.nii.gz"'
    img = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), expected_labels(ct5n_hu(), (0.0,)))
    first = min((pydicom.dcmread(p) for p in ct5n_paths()), key=lambda d: float(d.ImagePositionPatient[2]))
    x, y, z = (float(v) for v in first.ImagePositionPatient)
    np.testing.assert_allclose(img.affine @ [0, 0, 0, 1], [-x, -y, z, 1], atol=1e-4)  # RAS of the first voxel
    np.testing.assert_allclose(img.header.get_zooms(), (0.488281, 0.488281, 2.5), atol=1e-5)


def test_nifti_volume_in_and_out_keeps_the_affine(make_client, model_2c):
    client = make_client(model_2c)
    xyz = phantom((4, 32, 40)).transpose(2, 1, 0).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.8, 0, -20], [0, 0, 3, 5], [0, 0, 0, 1]])
    nii = gzip.compress(nib.Nifti1Image(xyz, affine).to_bytes())
    r = client.post("/segment", files={"volume": ("ct.nii.gz", nii)}, data={"format": "nifti"})
    assert r.status_code == 200, r.text
    out = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    np.testing.assert_allclose(out.affine, affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected_labels(xyz, THRESHOLDS_2C, CLIP_2C))
    assert out.get_data_dtype() == np.uint8


def test_npy_volume_two_classes_with_multiclass_reference(make_client, model_2c):
    client = make_client(model_2c)
    hu = phantom((3, 24, 32))
    expected = expected_labels(hu, THRESHOLDS_2C, CLIP_2C)
    reference = expected.copy()
    reference[reference == 2] = 1  # the reference calls the dense blobs class 1
    files = {
        "volume": ("ct.npy", npy_bytes(hu.astype(np.float32))),
        "reference": ("ref.npy", npy_bytes(reference)),
    }
    r = client.post("/segment", files=files, data={"spacing": "2,0.5,0.5"})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_array_equal(decode(body["mask"]), expected)
    soft, dense = body["metrics"]["classes"]
    n1, n2 = int((expected == 1).sum()), int((expected == 2).sum())
    assert soft["dice"] == pytest.approx(2 * n1 / (n1 + n1 + n2))
    assert dense["dice"] == 0.0 and dense["hd95_mm"] is None
    assert body["metrics"]["overall"]["dice"] == pytest.approx(1.0)
    assert body["metrics"]["mean_dice"] == pytest.approx(soft["dice"] / 2)


def test_boxes_mode_through_the_api(client):
    hu = phantom((4, 48, 64))
    boxes = [{"slice": 1, "box": [10, 12, 30, 30]}, {"box": [40, 20, 2, 60, 40, 4]}]
    r = client.post("/segment", files=dicom_parts(series_files(ct_series(hu))), data={"boxes": json.dumps(boxes)})
    assert r.status_code == 200, r.text
    body = r.json()
    full = expected_labels(hu, (THRESHOLD_HU,))
    expected = np.zeros_like(full)
    expected[1, 12:30, 10:30] = full[1, 12:30, 10:30]
    expected[2:4, 20:40, 40:60] = full[2:4, 20:40, 40:60]
    assert body["mode"] == "boxes" and len(body["boxes"]) == 3
    np.testing.assert_array_equal(decode(body["mask"]), expected)


@pytest.mark.parametrize("gz", [False, True])
def test_boxes_mode_on_a_nifti_volume_reads_the_boxes_slices(client, gz):
    """Box mode on a NIfTI upload: only the boxes' slices are read (msdn_core.readers.nifti ``slices``),
    and the answer is the one the whole volume would give, computed by hand."""
    hu = phantom((6, 48, 64))
    nii = nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), np.diag([0.7, 0.7, 2.5, 1.0])).to_bytes()
    boxes = [{"slice": 1, "box": [10, 12, 30, 30]}, {"box": [40, 20, 3, 60, 40, 5]}]
    files = {"volume": ("ct.nii.gz" if gz else "ct.nii", gzip.compress(nii) if gz else nii)}
    r = client.post("/segment", files=files, data={"boxes": json.dumps(boxes)})
    assert r.status_code == 200, r.text
    full = expected_labels(hu, (THRESHOLD_HU,))
    expected = np.zeros_like(full)
    expected[1, 12:30, 10:30] = full[1, 12:30, 10:30]
    expected[3:5, 20:40, 40:60] = full[3:5, 20:40, 40:60]
    body = r.json()
    assert body["mode"] == "boxes" and expected.any()
    np.testing.assert_array_equal(decode(body["mask"]), expected)


def test_full_series_proposals_through_the_api(make_client, model_det_calibrated):
    """A whole series in auto mode (a calibrated card): detector boxes -> 3D candidates -> crops ->
    post-processing -> JSON."""
    client = make_client(model_det_calibrated, min_component_mm3=2.0)  # voxel: 2.5 x 0.75 x 0.75 = 1.40625 mm^3
    hu = np.full((8, 48, 48), -800.0)
    hu[2:5, 10:14, 10:14] = 200.0  # a nodule on slices 2-4, in grid cell (1, 1) = [8, 8, 16, 16]
    hu[6, 40, 40] = 200.0  # a one-voxel speck (1.4 mm^3), in cell (5, 5) = [40, 40, 48, 48]
    r = client.post("/segment", files=dicom_parts(series_files(ct_series(hu))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "proposals"
    # candidates grown by 4 pixels (cut to the image) and 1 slice: nodule on slices 1-5, speck on 5-7
    boxes = sorted((b["slice"], b["box"]) for b in body["boxes"])
    assert boxes == sorted(
        [(z, [4.0, 4.0, 20.0, 20.0]) for z in range(1, 6)] + [(z, [36.0, 36.0, 48.0, 48.0]) for z in range(5, 8)]
    )
    assert all(b["source"] == "detector" and b["score"] == pytest.approx(1.0, abs=1e-3) for b in body["boxes"])
    expected = expected_labels(hu, (THRESHOLD_HU,))
    expected[6, 40, 40] = 0  # below the minimum volume
    np.testing.assert_array_equal(decode(body["mask"]), expected)
    [comp] = body["components"]
    assert comp["voxels"] == 48 and comp["box"] == [10, 10, 2, 14, 14, 5]
    assert comp["centre"] == pytest.approx([11.5, 11.5, 3.0])
    assert comp["score"] == pytest.approx(1.0, abs=1e-3)
    assert body["classes"][0]["voxels"] == 48

    slices = client.post("/segment", files=dicom_parts(series_files(ct_series(hu))), data={"mode": "slices"}).json()
    assert slices["mode"] == "slices" and slices["boxes"] == []
    assert [c["score"] for c in slices["components"]] == [1.0]  # highest foreground probability, 255/255


def test_proposal_score_threshold_setting(make_client, model_det):
    """A detection scoring under MSDN_PROPOSAL_SCORE_THRESHOLD is not segmented at all."""
    hu = np.full((3, 32, 32), -800.0)
    hu[1, 18:21, 2:5] = 3.0  # p = sigmoid(20 x 0.03) = 0.646: foreground, detection score 0.646
    hu[0, 4:8, 4:8] = 200.0  # p = 1
    both = expected_labels(hu, (THRESHOLD_HU,))
    strong = both.copy()
    strong[1] = 0
    for threshold, scores, mask in ((0.9, [1.0], strong), (0.5, [1.0, 0.646], both)):
        client = make_client(model_det, proposal_score_threshold=threshold)
        body = client.post("/segment", files=dicom_parts(series_files(ct_series(hu)))).json()
        assert body["mode"] == "proposals"
        assert [c["score"] for c in body["components"]] == pytest.approx(scores, abs=1e-3)
        np.testing.assert_array_equal(decode(body["mask"]), mask)


def test_kept_candidates_keep_their_faint_slices(make_client, model_det_calibrated):
    """Two thresholds: a candidate the calibrated 0.9 accepts (one slice at p = 1) keeps its slices
    scoring 0.69 (MSDN_PROPOSAL_EXTEND_THRESHOLD 0.01, the default), so the mask spans the nodule;
    with the extension threshold at 1 (single threshold) only the 0.9 slice and its z margin are
    segmented."""
    hu = np.full((8, 32, 32), -800.0)
    hu[1:6, 10:13, 10:13] = 4.0  # p = sigmoid(20 x 0.04) = 0.690: foreground, detection score 0.690
    hu[3, 10:13, 10:13] = 200.0  # p = 1: the one slice over 0.9
    hu[6, 26:29, 26:29] = 4.0  # a faint one elsewhere (best score 0.690 < 0.9): never a candidate
    full = expected_labels(hu, (THRESHOLD_HU,))
    full[6] = 0
    for extend, slices in ((None, range(1, 6)), (1.0, range(2, 5))):
        overrides = {} if extend is None else {"proposal_extend_threshold": extend}
        client = make_client(model_det_calibrated, **overrides)
        body = client.post("/segment", files=dicom_parts(series_files(ct_series(hu)))).json()
        assert body["mode"] == "proposals"
        expected = np.zeros_like(full)
        expected[list(slices)] = full[list(slices)]
        np.testing.assert_array_equal(decode(body["mask"]), expected)
        [comp] = body["components"]
        assert comp["box"][2:6:3] == [slices[0], slices[-1] + 1]  # z extent
        assert comp["score"] == pytest.approx(1.0, abs=1e-3)
        model = client.get("/v1/model").json()
        assert model["proposal_score_threshold"] == 0.9
        assert model["proposal_extend_threshold"] == (0.01 if extend is None else 0.9)  # clamped
        assert model["proposal_confirmation"] == "none"
    # confirmed by the segmentation: mean whole-slice probability (4 x 176 + 255) / (5 x 255) = 0.752
    client = make_client(model_det_calibrated, proposal_confirmation="segmentation", proposal_score_threshold=0.7)
    body = client.post("/segment", files=dicom_parts(series_files(ct_series(hu)))).json()
    [comp] = body["components"]
    assert comp["detection_score"] == pytest.approx(1.0, abs=1e-3)
    assert comp["segmentation_score"] == pytest.approx((4 * 176 + 255) / (5 * 255))
    assert comp["score"] == pytest.approx(comp["detection_score"] * comp["segmentation_score"])
    assert client.get("/v1/model").json()["proposal_confirmation"] == "segmentation"
    client = make_client(model_det_calibrated, proposal_confirmation="segmentation")  # the card's 0.9
    body = client.post("/segment", files=dicom_parts(series_files(ct_series(hu)))).json()
    assert body["components"] == [] and not decode(body["mask"]).any()  # 0.752 < 0.9: not confirmed


def test_enhanced_multiframe_input_and_seg(client):
    singles = [pydicom.dcmread(p) for p in ct5n_paths()]
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(
        singles,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    upload = dicom_parts([("multi.dcm", to_bytes(multi))])
    body = client.post("/segment", files=upload).json()
    np.testing.assert_array_equal(decode(body["mask"]), expected_labels(ct5n_hu(), (THRESHOLD_HU,)))
    r = client.post("/segment", files=upload, data={"format": "dicom-seg"})
    assert r.status_code == 200, r.text
    seg = hd.seg.segread(io.BytesIO(r.content))
    frames = seg.get_pixels_by_source_frame(
        str(multi.SOPInstanceUID),
        [1, 2, 3, 4, 5],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    # legacy conversion keeps the input order; compare frame by frame through the positions
    order = np.argsort([float(d.ImagePositionPatient[2]) for d in singles])
    np.testing.assert_array_equal(frames[order], decode(body["mask"]))


def test_mixed_series_upload_lists_them_and_series_uid_picks(client):
    a = ct_series(phantom((2, 16, 16)))
    b = ct_series(phantom((3, 16, 16), seed=2))
    files = dicom_parts(series_files(a, "a") + series_files(b, "b"))
    r = client.post("/segment", files=files)
    assert r.status_code == 422 and r.json()["code"] == "mixed_series"
    assert {s["series_instance_uid"] for s in r.json()["detail"]["series"]} == {
        a[0].SeriesInstanceUID,
        b[0].SeriesInstanceUID,
    }
    r = client.post("/segment", files=files, data={"series_uid": str(b[0].SeriesInstanceUID)})
    assert r.status_code == 200 and r.json()["input"]["shape"] == [3, 16, 16]


def test_accept_negotiation(client):
    assert (
        client.post("/segment", files=ct5n_upload(), headers={"Accept": "application/dicom"}).headers["content-type"]
        == "application/dicom"
    )
    r = client.post("/segment", files=ct5n_upload(), headers={"Accept": "text/html;q=0.9, application/json;q=0.5"})
    assert r.headers["content-type"] == "application/json"
    r = client.post("/segment", files=ct5n_upload(), headers={"Accept": "text/csv"})
    assert r.status_code == 406 and r.json()["code"] == "not_acceptable"
    r = client.post("/segment", files=ct5n_upload(), headers={"Accept": "text/csv"}, data={"format": "json"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "files, data, status, code",
    [
        ({}, {}, 422, "no_input"),
        ({"dicom": ("x.txt", b"not dicom at all")}, {}, 422, "not_dicom"),
        ({"dicom": ("x.dcm", b"")}, {}, 422, "not_dicom"),
        ({"volume": ("v.npy", b"\x93NUMPY garbage")}, {"spacing": "1,1,1"}, 422, "invalid_volume"),
        ({"volume": ("v.nii", b"\x00" * 400)}, {}, 422, "invalid_volume"),
        (
            {"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))},
            {"format": "dicom-seg", "spacing": "1,1,1"},
            422,
            "format_needs_dicom",
        ),
        ({"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))}, {}, 422, "spacing_required"),
        (
            {"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))},
            {"spacing": "1,1,1", "mode": "magic"},
            422,
            "invalid_request",
        ),
        (
            {"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))},
            {"spacing": "1,1,1", "mode": "boxes"},
            422,
            "invalid_mode",
        ),
        (
            {"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))},
            {"spacing": "1,1,1", "mode": "proposals"},
            422,
            "invalid_mode",
        ),
        (
            {"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))},
            {"spacing": "1,1,1", "format": "gif"},
            422,
            "invalid_request",
        ),
        (
            {"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))},
            {"spacing": "1,1,1", "boxes": "[{"},
            422,
            "invalid_boxes",
        ),
        (
            {"volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16))))},
            {"spacing": "1,1,1", "boxes": '[{"slice": 0, "box": [0, 0, 17, 4]}]'},
            422,
            "invalid_boxes",
        ),
        (
            {
                "volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16)))),
                "reference": ("r.npy", npy_bytes(np.zeros((1, 8, 8), np.uint8))),
            },
            {"spacing": "1,1,1"},
            422,
            "reference_mismatch",
        ),
        (
            {
                "volume": ("v.npy", npy_bytes(np.zeros((1, 16, 16)))),
                "reference": ("r.npy", npy_bytes(np.full((1, 16, 16), 3, np.uint8))),
            },
            {"spacing": "1,1,1"},
            422,
            "reference_mismatch",
        ),
        ({"dicom": ("evil.zip", zip_bytes({"../../etc/x.dcm": b"1"}))}, {}, 422, "zip_path_traversal"),
    ],
)
def test_bad_input_gets_a_4xx_with_code_and_message(client, files, data, status, code):
    r = client.post("/segment", files=files or {"unused": ("", b"")}, data=data)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["message"]


def test_real_error_files(client):
    truncated = Path(pydicom_file("MR_truncated.dcm")).read_bytes()
    r = client.post("/segment", files=dicom_parts([("MR_truncated.dcm", truncated)]))
    assert r.status_code == 422 and r.json()["code"] == "modality_not_allowed"
    meta_less = Path(pydicom_file("no_meta.dcm")).read_bytes()
    r = client.post("/segment", files=dicom_parts([("no_meta.dcm", meta_less)]))
    assert r.status_code == 422 and r.json()["code"] == "not_dicom" and "no_meta.dcm" in r.json()["message"]
    cut = Path(ct5n_paths()[0]).read_bytes()[:-100]  # truncated CT pixel data
    r = client.post("/segment", files=dicom_parts([("cut.dcm", cut)]))
    assert r.status_code == 422 and r.json()["code"] in ("pixel_data_invalid", "not_dicom")
    assert "cut.dcm" in r.json()["message"]


def test_truncated_mr_when_mr_is_allowed(make_client, model_1c):
    client = make_client(model_1c, allowed_modalities=["MR"])
    r = client.post(
        "/segment",
        files=dicom_parts([("MR_truncated.dcm", Path(pydicom_file("MR_truncated.dcm")).read_bytes())]),
    )
    assert r.status_code == 422 and r.json()["code"] == "pixel_data_invalid"


def test_limits_answer_413(make_client, model_1c):
    client = make_client(model_1c, max_slices=4)
    r = client.post("/segment", files=ct5n_upload())
    assert r.status_code == 413 and r.json()["code"] == "too_many_slices"
    client = make_client(model_1c, max_files=4)
    r = client.post("/segment", files=ct5n_upload())
    assert r.status_code == 413 and r.json()["code"] == "too_many_files"


def test_more_than_a_thousand_parts_reach_the_service(client):
    parts = [("dicom", (f"{i}.dcm", b"not dicom", "application/dicom")) for i in range(1200)]
    r = client.post("/segment", files=parts)
    assert r.status_code == 422 and r.json()["code"] == "not_dicom"  # parsed, not refused by the form parser


def test_saturated_service_answers_503_with_retry_after(make_client, model_1c):
    client = make_client(model_1c, max_concurrent_inferences=1, max_queued_requests=0, retry_after_s=3)
    limiter = client.app.state.limiter
    release = threading.Event()
    busy = client.portal.start_task_soon(limiter.run, lambda deadline: release.wait(10))
    try:
        for _ in range(100):
            if limiter.running:
                break
            threading.Event().wait(0.01)
        r = client.post("/segment", files=ct5n_upload())
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and r.json()["code"] == "overloaded"
    finally:
        release.set()
        busy.result(timeout=10)
    assert client.post("/segment", files=ct5n_upload()).status_code == 200
    assert 'msdn_rejected_total{reason="overloaded"} 1.0' in client.get("/metrics").text


def test_request_time_limit_answers_504(make_client, model_1c):
    client = make_client(model_1c, request_timeout_s=0.001)
    r = client.post("/segment", files=dicom_parts(series_files(ct_series(phantom((40, 64, 64))))))
    assert r.status_code == 504 and r.json()["code"] == "timeout"


def test_logs_never_carry_patient_identifiers(make_client, model_1c, caplog):
    client = make_client(model_1c)
    caplog.set_level(logging.DEBUG)
    files = dicom_parts(series_files(ct_series(phantom((3, 16, 16)))))
    for data in ({}, {"format": "dicom-seg"}, {"boxes": "[{"}):
        client.post("/segment", files=files, data=data)
    client.post("/segment", files=ct5n_upload())  # Doe^Peter, 98890234
    client.post("/segment", files=dicom_parts([("ct.dcm", Path(pydicom_file("CT_small.dcm")).read_bytes())]))
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "segment" in text  # the service did log
    for secret in (
        PATIENT_NAME,
        PATIENT_ID,
        PATIENT_BIRTH_DATE,
        "Testpatient",
        "Doe^Peter",
        "98890234",
        "CompressedSamples",
        "1CT1",
    ):
        assert secret not in text


def test_a_reference_on_part_of_the_input_grid_is_zero_padded(client, tmp_path):
    """What dcmqi's segimage2itkimage and 3D Slicer export: an NRRD holding only the 12 slices around the
    finding of a 20-slice series, voxel-aligned with it. It scores as the whole-grid reference would;
    half a voxel off, it is still refused."""
    import nrrd

    hu = np.full((20, 24, 24), -1000.0)
    hu[6:10, 8:14, 9:15] = 300.0
    datasets = ct_series(hu, spacing=(2.0, 0.75, 0.75), origin=(-10.0, -20.0, 50.0))
    files = dicom_parts(series_files(datasets))
    predicted = expected_labels(hu, (THRESHOLD_HU,))
    part = predicted[4:16].copy()
    part[3, 8, 9:13] = 0  # 4 misses in the part (input slice 7)
    inter, p, r_ = int((predicted & np.pad(part, ((4, 4), (0, 0), (0, 0)))).sum()), predicted.sum(), part.sum()
    # the part's LPS geometry (NRRD space directions = columns of the affine): slice 4 of the input first
    origin = np.asarray(datasets[4].ImagePositionPatient, float)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.75, 0.75, 2.0]),
        "space origin": origin,
    }
    nrrd.write(str(tmp_path / "part.nrrd"), np.ascontiguousarray(part.transpose(2, 1, 0)), header, index_order="F")
    ref = ("reference", ("part.nrrd", (tmp_path / "part.nrrd").read_bytes(), "application/octet-stream"))
    r = client.post("/segment", files=files + [ref])
    assert r.status_code == 200, r.text
    assert r.json()["metrics"]["classes"][0]["dice"] == pytest.approx(2 * inter / (p + r_))
    header["space origin"] = origin + [0.375, 0.0, 0.0]  # half a pixel off
    nrrd.write(str(tmp_path / "off.nrrd"), np.ascontiguousarray(part.transpose(2, 1, 0)), header, index_order="F")
    off = ("reference", ("off.nrrd", (tmp_path / "off.nrrd").read_bytes(), "application/octet-stream"))
    r = client.post("/segment", files=files + [off])
    assert r.status_code == 422 and r.json()["code"] == "reference_mismatch"


def test_an_anonymised_series_without_uids_answers_json_and_nifti_not_seg(client):
    """Study / Series / SOP Instance UIDs blanked: grouped by geometry into one series (derived UID, said in
    the answer), the mask is the one of the same files with their UIDs; a SEG, which must reference them,
    is 422 seg_not_built naming the missing UIDs."""

    def blanked() -> list:
        parts = []
        for path in ct5n_paths():
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ""
            parts.append(("dicom", (Path(path).name, to_bytes(ds), "application/dicom")))
        return parts

    expected = decode(client.post("/segment", files=ct5n_upload()).json()["mask"])
    r = client.post("/segment", files=blanked())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input"]["series_uid_derived"] is True and body["input"]["series_instance_uid"].startswith("2.25.")
    np.testing.assert_array_equal(decode(body["mask"]), expected)
    assert client.post("/segment", files=blanked(), data={"format": "nifti"}).status_code == 200
    r = client.post("/segment", files=blanked(), data={"format": "dicom-seg"})
    assert r.status_code == 422 and r.json()["code"] == "seg_not_built"
    assert "StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID" in r.json()["message"]
