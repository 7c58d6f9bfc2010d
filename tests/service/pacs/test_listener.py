"""Push listener: Orthanc pushes a series to our Storage SCP, msdn segments it and stores the SEG back."""

from __future__ import annotations

import io
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from service.pacs.listener import SeriesAssembler
from service.pacs.scp import StorageReceiver
from service.pacs.storage import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from tests.service.pacs.test_router import make_app
from tests.service.pacs.threshold_pipeline import sort_by_position, threshold_mask

pytestmark = pytest.mark.orthanc


def _seg_series_of_study(orthanc, study_uid: str) -> set[str]:
    return set(orthanc.find("Series", {"StudyInstanceUID": study_uid, "Modality": "SEG"}))


def test_pushed_series_is_segmented_and_the_seg_stored_back(monkeypatch, orthanc, pacs_series):
    mr = pacs_series["mr_small"]
    for key, value in {
        "PROTOCOL": "dimse",
        "AE_TITLE": "MSDN",
        "PEER_AE_TITLE": orthanc.aet,
        "PEER_PORT": str(orthanc.dicom_port),
        "STORAGE_HOST": "127.0.0.1",
        "STORAGE_PORT": str(orthanc.scp_port),
        "LISTENER_ENABLED": "true",
        "LISTENER_SERIES_IDLE_S": "0.5",
    }.items():
        monkeypatch.setenv(f"MSDN_PACS_{key}", value)
    before = _seg_series_of_study(orthanc, mr.study_uid)
    app = make_app(None)
    with TestClient(app):
        (series_id,) = orthanc.find("Series", {"SeriesInstanceUID": mr.series_uid})
        # Orthanc C-STOREs the series to the modality "msdn" = MSDN@127.0.0.1:scp_port (our listener).
        response = orthanc.rest.post(f"{orthanc.url}/modalities/msdn/store", data=series_id, timeout=30)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 20
        new = set()
        # The listener counts a series as completed after its store returns: wait for both.
        while time.monotonic() < deadline and not (new and app.state.pacs_listener.completed == 1):
            time.sleep(0.2)
            new = _seg_series_of_study(orthanc, mr.study_uid) - before
        assert app.state.pacs_listener.completed == 1
    assert len(new) == 1, orthanc.log_tail()
    (seg_series_id,) = new
    instances = orthanc.rest.get(f"{orthanc.url}/series/{seg_series_id}/instances", timeout=10).json()
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(orthanc.instance_file(instances[0]["ID"]))))
    ordered = sort_by_position(mr.datasets)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in ordered], segment_numbers=[1]
    )[..., 0]
    np.testing.assert_array_equal(got > 0, threshold_mask(ordered))
    assert app.state.pacs_listener is None  # stopped with the app


def test_unknown_ae_cannot_push(dimse_settings):
    receiver = StorageReceiver.from_settings(
        dimse_settings.model_copy(update={"storage_port": 0}), on_unexpected=lambda *a: STATUS_SUCCESS
    ).start()
    try:
        for calling, accepted in (("STRANGER", False), (dimse_settings.peer_ae_title, True)):
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MSDN")
            assert assoc.is_established is accepted, calling
            if accepted:
                assert assoc.send_c_echo().Status == 0
                assoc.release()
            else:
                assert assoc.is_rejected
    finally:
        receiver.stop()


def test_assembler_groups_series_and_enforces_limits(pacs_series):
    emitted: list[tuple[list, str]] = []
    assembler = SeriesAssembler(lambda ds, ae: emitted.append((ds, ae)), idle_s=0.2, max_instances=3)
    ct5, mr = pacs_series["ct5"].datasets, pacs_series["mr_small"].datasets
    statuses = [assembler.add(ds, 512, "CT1") for ds in ct5]  # 5 instances, limit 3
    assert statuses == [STATUS_SUCCESS] * 3 + [STATUS_OUT_OF_RESOURCES] * 2
    assert assembler.add(mr[0], 8192, "MR1") == STATUS_SUCCESS
    assembler.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not emitted:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        assembler.stop()
    # Only the MR series came out; the over-limit CT series was dropped, not half-segmented.
    assert [(len(ds), ae) for ds, ae in emitted] == [(1, "MR1")]
    assert emitted[0][0][0].SOPInstanceUID == mr[0].SOPInstanceUID
