"""Both PACS clients (DICOMweb; DIMSE with C-GET and with C-MOVE) against a real Orthanc."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000

from service.pacs import PacsClient, SeriesNotFoundError, SeriesTooLargeError, create_pacs_client
from service.pacs.dicomweb import DicomwebPacsClient
from service.pacs.dimse import DimsePacsClient
from tests.service.pacs.threshold_pipeline import sort_by_position, threshold_mask, threshold_pipeline

pytestmark = pytest.mark.orthanc


def test_client_implements_protocol(pacs_client):
    assert isinstance(pacs_client, PacsClient)
    expected = DicomwebPacsClient if pacs_client.protocol == "dicomweb" else DimsePacsClient
    assert type(pacs_client) is expected


def test_echo(pacs_client):
    pacs_client.echo()  # raises on failure


def test_find_studies_lists_uploaded_studies(pacs_client, pacs_series):
    studies = {s.study_uid: s for s in pacs_client.find_studies()}
    ct5 = pacs_series["ct5"]
    assert ct5.study_uid in studies
    assert studies[ct5.study_uid].study_date == "20010101"
    assert "CT" in studies[ct5.study_uid].modalities
    # Filter by StudyInstanceUID: exactly that study.
    only = pacs_client.find_studies(study_uid=pacs_series["mr_small"].study_uid)
    assert [s.study_uid for s in only] == [pacs_series["mr_small"].study_uid]


def test_find_series_reports_instance_count(pacs_client, pacs_series):
    ct5 = pacs_series["ct5"]
    found = pacs_client.find_series(ct5.study_uid)
    by_uid = {s.series_uid: s for s in found}
    assert ct5.series_uid in by_uid
    info = by_uid[ct5.series_uid]
    assert info.instance_count == 5
    assert info.modality == "CT"
    assert info.series_number == int(ct5.datasets[0].SeriesNumber)
    assert pacs_client.find_series(ct5.study_uid, series_uid="1.2.3.4.5.6") == []


@pytest.mark.parametrize("name", ["ct5", "mr_small"])
def test_fetch_series_matches_the_original_files(pacs_client, pacs_series, name):
    series = pacs_series[name]
    originals = {ds.SOPInstanceUID: ds for ds in series.datasets}
    fetched = pacs_client.fetch_series(series.study_uid, series.series_uid)
    assert sorted(ds.SOPInstanceUID for ds in fetched) == sorted(originals)
    numbers = [int(ds.InstanceNumber) for ds in fetched]
    assert numbers == sorted(numbers)
    for ds in fetched:
        original = originals[ds.SOPInstanceUID]
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
        assert ds.ImagePositionPatient == original.ImagePositionPatient


def test_fetch_compressed_series_arrives_as_stored(pacs_client, pacs_series):
    series = pacs_series["ct_j2k"]
    (original,) = series.datasets
    (fetched,) = pacs_client.fetch_series(series.study_uid, series.series_uid)
    assert fetched.file_meta.TransferSyntaxUID == JPEG2000  # not transcoded on the way
    assert fetched.pixel_array.shape == (512, 512)
    np.testing.assert_array_equal(fetched.pixel_array, original.pixel_array)


def test_fetch_unknown_series_is_not_found(pacs_client, pacs_series):
    ct5 = pacs_series["ct5"]
    with pytest.raises(SeriesNotFoundError, match="1.2.826.0.1.3680043.99.1"):
        pacs_client.fetch_series(ct5.study_uid, "1.2.826.0.1.3680043.99.1")
    with pytest.raises(SeriesNotFoundError):
        pacs_client.fetch_series("1.2.826.0.1.3680043.99.2", ct5.series_uid)


def test_fetch_rejects_invalid_uid(pacs_client):
    with pytest.raises(ValueError, match="series_uid"):
        pacs_client.fetch_series("1.2.3", "not a uid")


@pytest.fixture
def limited_client(pacs_settings, request):
    client = create_pacs_client(pacs_settings.model_copy(update=request.param))
    try:
        yield client
    finally:
        client.close()


@pytest.mark.parametrize("limited_client", [{"max_instances": 4}], indirect=True)
def test_series_over_instance_limit(limited_client, pacs_series):
    ct5 = pacs_series["ct5"]
    with pytest.raises(SeriesTooLargeError, match="max_instances=4"):
        limited_client.fetch_series(ct5.study_uid, ct5.series_uid)


# 5 slices of 16 x 16 x 2 bytes = 512 bytes of pixel data each; 1200 bytes allow two.
@pytest.mark.parametrize("limited_client", [{"max_series_bytes": 1200}], indirect=True)
def test_series_over_byte_limit(limited_client, pacs_series):
    ct5 = pacs_series["ct5"]
    with pytest.raises(SeriesTooLargeError, match="max_series_bytes=1200"):
        limited_client.fetch_series(ct5.study_uid, ct5.series_uid)


def _check_seg(seg_ds: pydicom.Dataset, expected_uid: str, sources: list[pydicom.Dataset]) -> None:
    """The SEG read back is the one stored and its mask equals an independent threshold of the sources."""
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.SOPInstanceUID == expected_uid
    assert seg.Modality == "SEG"
    ordered = sort_by_position(sources)
    expected = threshold_mask(ordered)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in ordered], segment_numbers=[1]
    )
    np.testing.assert_array_equal(got[..., 0].astype(bool), expected)
    assert expected.any() and not expected.all()  # a real, non-trivial mask


def test_store_seg_and_read_it_back_independently(pacs_client, pacs_series, orthanc, dicomweb_settings, dimse_settings):
    ct5 = pacs_series["ct5"]
    sources = pacs_client.fetch_series(ct5.study_uid, ct5.series_uid)
    seg = threshold_pipeline(sources)
    result = pacs_client.store([seg])
    assert result.ok and result.stored == [seg.SOPInstanceUID]

    # 1. Orthanc's REST API (not the protocol under test).
    files = orthanc.series_instance_files(seg.SeriesInstanceUID)
    assert len(files) == 1
    _check_seg(pydicom.dcmread(io.BytesIO(files[0])), seg.SOPInstanceUID, ct5.datasets)

    # 2. The other protocol.
    other_settings = dimse_settings if pacs_client.protocol == "dicomweb" else dicomweb_settings
    other = create_pacs_client(other_settings)
    try:
        (back,) = other.fetch_series(ct5.study_uid, seg.SeriesInstanceUID)
    finally:
        other.close()
    _check_seg(back, seg.SOPInstanceUID, ct5.datasets)


def test_store_rejects_empty_list(pacs_client):
    with pytest.raises(ValueError, match="empty"):
        pacs_client.store([])
