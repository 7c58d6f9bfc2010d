"""What the push listener refuses at C-STORE time, each with its status and stable code."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import RLELossless

from service.pacs.intake import check_instance
from service.pacs.uids import assign_result_uids, instances_digest
from tests.support.dicom_series import ct_series, to_bytes


def one() -> pydicom.Dataset:
    return ct_series(np.zeros((1, 8, 8)))[0]


def ct_only(modality: str) -> bool:
    return modality == "CT"


def test_a_good_instance_passes():
    assert check_instance(one(), modality_allowed=ct_only) is None


def _without(keyword):
    def change(ds):
        delattr(ds, keyword)

    return change


def _set(keyword, value):
    def change(ds):
        setattr(ds, keyword, value)

    return change


def _raw(tag, vr, value: bytes):
    """An element as received off the wire (converted only when read), e.g. a DS that is not a number."""

    def change(ds):
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)

    return change


@pytest.mark.parametrize(
    "change, status, code",
    [
        (_without("SeriesInstanceUID"), 0xA900, "missing_attribute"),
        (_without("SOPInstanceUID"), 0xA900, "missing_attribute"),
        (_set("SOPInstanceUID", "1.2/../../etc"), 0xA900, "invalid_input"),  # would name a file outside the spool
        (_set("Modality", "MR"), 0xC011, "modality_not_allowed"),
        (_set("Modality", "SEG"), 0x0122, "unsupported_image"),
        (_set("SOPClassUID", "1.2.840.10008.5.1.4.1.1.481.3"), 0x0122, "unsupported_image"),  # RT Structure Set
        (_without("PixelData"), 0xA900, "no_pixel_data"),
        (_set("PixelData", b"\0" * 100), 0xA900, "pixel_data_invalid"),  # 8 x 8 x 2 bytes expected
        (_set("Rows", 9), 0xA900, "pixel_data_invalid"),  # wrong size
        (_raw(0x00200032, "DS", b"1\\abc\\3 "), 0xA900, "inconsistent_geometry"),  # non-numeric position
        (_without("ImageOrientationPatient"), 0xA900, "inconsistent_geometry"),
        (_set("PixelSpacing", [0, 1]), 0xA900, "inconsistent_geometry"),
    ],
)
def test_refusals(change, status, code):
    ds = one()
    change(ds)
    refusal = check_instance(ds, modality_allowed=ct_only)
    assert refusal is not None
    assert (refusal.status, refusal.code.value) == (status, code)
    assert len(refusal.status_dataset().ErrorComment) <= 64


def test_an_unparseable_data_set_is_refused():
    data = bytearray(to_bytes(one()))
    data[-200:] = b"\xff" * 200  # the tail (pixel data element header included) is garbage
    ds = pydicom.dcmread(io.BytesIO(bytes(data[: len(data) - 150])), force=True, defer_size=None)
    refusal = check_instance(ds, modality_allowed=ct_only)
    assert refusal is not None and refusal.status in (0xC000, 0xA900)


def test_compressed_pixel_data_is_not_size_checked():
    ds = ct_series(np.zeros((1, 8, 8)), transfer_syntax=RLELossless)[0]
    assert check_instance(ds, modality_allowed=ct_only) is None


def test_result_uids_are_deterministic():
    seg_a, seg_b, seg_c = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    args = {"series_uid": "1.2.3", "model_sha256": "ab" * 32, "sop_instance_uids": ["1.1", "1.2"]}
    assign_result_uids(seg_a, **args)
    assign_result_uids(seg_b, **{**args, "sop_instance_uids": ["1.2", "1.1", "1.1"]})  # order, repeats
    assign_result_uids(seg_c, **{**args, "model_sha256": "cd" * 32})
    assert (seg_a.SOPInstanceUID, seg_a.SeriesInstanceUID) == (seg_b.SOPInstanceUID, seg_b.SeriesInstanceUID)
    assert seg_a.SOPInstanceUID != seg_a.SeriesInstanceUID
    assert seg_c.SOPInstanceUID != seg_a.SOPInstanceUID
    assert instances_digest(["1.1"]) != instances_digest(["1.1", "1.2"])
    assert pydicom.uid.UID(seg_a.SOPInstanceUID).is_valid
