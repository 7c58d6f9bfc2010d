"""DICOM SEG answers from real scanners' quirks (service.outputs.dicom_seg), read back with highdicom."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from service.outputs.rle import decode
from tests.service.helpers import ct5n_paths
from tests.support.dicom_series import ct_series, series_files, to_bytes


def _upload(edit) -> list:
    """pydicom's 5-slice CT5N series, each file edited by ``edit(dataset)`` and written again."""
    files = []
    for path in ct5n_paths():
        ds = pydicom.dcmread(path)
        edit(ds)
        files.append(("dicom", (Path(path).name, to_bytes(ds), "application/dicom")))
    return files


def _seg_and_mask(client, files) -> tuple[hd.seg.Segmentation, object]:
    mask = decode(client.post("/segment", files=files).json()["mask"])
    r = client.post("/segment", files=files, data={"format": "dicom-seg"})
    assert r.status_code == 200, r.text
    return hd.seg.segread(io.BytesIO(r.content)), mask


def _back(seg: hd.seg.Segmentation, files) -> object:
    sources = sorted(
        (pydicom.dcmread(io.BytesIO(f[1][1])) for f in files), key=lambda d: float(d.ImagePositionPatient[2])
    )
    return seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in sources], combine_segments=True, assert_missing_frames_are_empty=True
    )


def test_an_empty_specific_character_set_gives_a_seg_in_the_default_repertoire(client):
    """GE CT writes (0008,0005) empty: highdicom refused it ('' is not a valid SpecificCharacterSetValues),
    which was a 500 for application/dicom while JSON was 200."""

    def blank(ds):
        ds.SpecificCharacterSet = ""

    files = _upload(blank)
    assert pydicom.dcmread(io.BytesIO(files[0][1][1]))["SpecificCharacterSet"].value == ""
    seg, mask = _seg_and_mask(client, files)
    assert "SpecificCharacterSet" not in seg  # absent: the default repertoire, as an empty value means
    assert (_back(seg, files) == mask).all() and mask.any()


@pytest.mark.parametrize(("value", "expected"), [("ISO_IR 100", "ISO_IR 100"), ("LATIN1", "ISO_IR 192")])
def test_the_sources_character_set_is_kept_or_made_utf8(client, value, expected):
    """A standard term is kept; a value no standard term names (some PACS write 'LATIN1') gives UTF-8."""

    def charset(ds):
        ds.SpecificCharacterSet = value

    files = _upload(charset)
    seg, mask = _seg_and_mask(client, files)
    assert seg.SpecificCharacterSet == expected
    assert (_back(seg, files) == mask).all()


def test_a_source_highdicom_cannot_build_from_is_a_422_naming_it(client):
    """Sources highdicom refuses (here a PatientSex outside M / F / O) answer 422 seg_not_built, not 500;
    JSON still answers."""

    def sex(ds):
        ds.PatientSex = "X"

    files = _upload(sex)
    assert client.post("/segment", files=files).status_code == 200
    r = client.post("/segment", files=files, data={"format": "dicom-seg"})
    assert r.status_code == 422 and r.json()["code"] == "seg_not_built", r.text
    assert "ask for json or nifti" in r.json()["message"]


@pytest.mark.parametrize("keep", [False, True])
def test_empty_frames_are_omitted_or_kept_by_setting(make_client, model_1c, keep):
    """``MSDN_SEG_KEEP_EMPTY_FRAMES``: by default only the slices with foreground get a frame; kept, every
    source slice has one (what OHIF and MONAI Deploy asked for), and both read back to the same mask."""
    hu = np.full((5, 32, 32), -1000.0)
    hu[1:3, 10:20, 8:16] = 400.0  # foreground on 2 of 5 slices
    files = [("dicom", (name, data, "application/dicom")) for name, data in series_files(ct_series(hu))]
    client = make_client(model_1c, seg_keep_empty_frames=keep)
    seg, mask = _seg_and_mask(client, files)
    assert mask.reshape(5, -1).any(axis=1).tolist() == [False, True, True, False, False]
    assert int(seg.NumberOfFrames) == (5 if keep else 2)
    assert (_back(seg, files) == mask).all()
