"""The JSON answer places itself (service.outputs.report): affines, SOP Instance UIDs in z order, mm."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from msdn_core.geometry import lps_to_ras
from service.outputs.rle import decode
from tests.support.dicom_series import ct_series, series_files


def _reversed_series() -> tuple[np.ndarray, list]:
    """A 6-slice CT whose InstanceNumber runs against the slice normal (as on the Siemens series of issue
    23), uploaded in InstanceNumber order, with one bright blob on slices 4-5 (z along the normal)."""
    hu = np.full((6, 32, 40), -1000.0)
    hu[4:6, 20:26, 5:12] = 300.0
    datasets = ct_series(hu, spacing=(2.0, 0.8, 0.6), origin=(-12.0, 30.0, -100.0))
    for ds in datasets:
        ds.InstanceNumber = len(datasets) - int(ds.InstanceNumber) + 1
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    files = [("dicom", (name, data, "application/dicom")) for name, data in series_files(datasets)]
    return hu, files


def test_a_component_is_placed_on_its_dicom_file_through_the_json_alone(client):
    _, files = _reversed_series()
    body = client.post("/segment", files=files, data={"format": "json"}).json()
    mask = decode(body["mask"])
    (component,) = body["components"]
    uids = body["input"]["sop_instance_uids"]
    affine = np.asarray(body["input"]["affine_lps"])
    np.testing.assert_allclose(np.asarray(body["input"]["affine_ras"]), lps_to_ras(affine))
    # the files, by pydicom alone: the one whose plane holds the component's centre
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(io.BytesIO(f[1][1])) for f in files)}
    centre = np.asarray(component["centre_mm"])
    ds = min(
        by_uid.values(),
        key=lambda d: abs(float(np.dot(np.asarray(d.ImagePositionPatient) - centre, [0.0, 0.0, 1.0]))),
    )
    z = uids.index(str(ds.SOPInstanceUID))
    assert int(ds.InstanceNumber) in (1, 2)  # z 4-5 of the normal: InstanceNumber 2 and 1
    # the centre in that file's pixel coordinates (IPP, IOP, PixelSpacing) is inside the mask there
    row_dir, col_dir = np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3))
    offset = centre - np.asarray(ds.ImagePositionPatient, float)
    column = float(np.dot(offset, row_dir)) / float(ds.PixelSpacing[1])
    row = float(np.dot(offset, col_dir)) / float(ds.PixelSpacing[0])
    assert mask[z, int(round(row)), int(round(column))] == component["class_value"]
    # the box in mm: the outer faces of voxels x 5..11, y 20..25, z 4..5
    x0, y0, z0 = affine[:3, 3]
    assert component["box_mm"] == pytest.approx(
        [x0 + 4.5 * 0.6, y0 + 19.5 * 0.8, z0 + 3.5 * 2.0, x0 + 11.5 * 0.6, y0 + 25.5 * 0.8, z0 + 5.5 * 2.0]
    )
    assert body["input"]["frame_numbers"] is None


def test_a_volume_answer_gives_its_affine_and_no_uids(client):
    hu = np.full((4, 32, 32), -1000.0, np.float32)
    hu[1:3, 8:12, 8:12] = 300.0
    ras = np.diag([-0.7, -0.7, 2.5, 1.0])
    ras[:3, 3] = [10.0, 20.0, -30.0]
    upload = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), ras).to_bytes()
    body = client.post("/segment", files=[("volume", ("ct.nii", upload))], data={"format": "json"}).json()
    np.testing.assert_allclose(np.asarray(body["input"]["affine_ras"]), ras, atol=1e-5)
    assert body["input"]["sop_instance_uids"] is None
    (component,) = body["components"]
    centre_ras = ras @ np.append(component["centre"], 1.0)
    np.testing.assert_allclose(lps_to_ras(np.eye(4))[:3, :3] @ centre_ras[:3], component["centre_mm"], atol=1e-3)


def test_boxes_from_a_viewer_by_instance_or_in_mm_give_the_pixel_boxes_answer(client):
    """What a viewer knows: the instance it drew on (its InstanceNumber runs against the slice normal
    here) or patient mm. Both give the answer of the same box in the volume's pixel coordinates."""
    _, files = _reversed_series()
    body = client.post("/segment", files=files, data={"format": "json"}).json()
    uids, affine = body["input"]["sop_instance_uids"], np.asarray(body["input"]["affine_lps"])
    by_pixels = [{"slice": 4, "box": [3, 18, 14, 28]}]
    expected = decode(client.post("/segment", files=files, data={"boxes": json.dumps(by_pixels)}).json()["mask"])
    assert expected[4].any() and not expected[5].any()  # only the boxed slice
    instance = pydicom.dcmread(io.BytesIO(next(f[1][1] for f in files)), stop_before_pixels=True)
    assert int(instance.InstanceNumber) == 1 and uids.index(str(instance.SOPInstanceUID)) == 5  # reversed
    on_instance = [{"sop_instance_uid": uids[4], "box": [3, 18, 14, 28]}]
    got = decode(client.post("/segment", files=files, data={"boxes": json.dumps(on_instance)}).json()["mask"])
    np.testing.assert_array_equal(got, expected)
    # the same box in LPS mm: its voxel centres' corners, from the answer's affine
    low, high = affine @ [3, 18, 4, 1], affine @ [13, 27, 4, 1]
    in_mm = [{"box_mm": [*low[:3], *high[:3]]}]
    got = decode(client.post("/segment", files=files, data={"boxes": json.dumps(in_mm)}).json()["mask"])
    np.testing.assert_array_equal(got, expected)
