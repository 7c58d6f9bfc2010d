"""The proposal threshold in use (setting > card > 0.5) and what mode=auto runs, through the real app."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core.card import DetectionOperatingPoint
from service.operating_point import (
    DEFAULT_SCORE_THRESHOLD,
    ProposalThreshold,
    auto_mode,
    confirmation,
    proposal_threshold,
)
from service.outputs.rle import decode
from tests.service.helpers import THRESHOLD_HU
from tests.support.dicom_series import ct_series, series_files
from tests.support.onnx_models import expected_labels, make_card


def test_threshold_source_order():
    plain = make_card(name="m", classes=["c"], detection=True)
    calibrated = make_card(name="m", classes=["c"], detection=True, score_threshold=0.12)
    assert proposal_threshold(None, plain) == ProposalThreshold(DEFAULT_SCORE_THRESHOLD, "default")
    assert proposal_threshold(None, None) == ProposalThreshold(0.5, "default")
    assert proposal_threshold(None, calibrated) == ProposalThreshold(0.12, "card")
    assert proposal_threshold(0.3, calibrated) == ProposalThreshold(0.3, "setting")
    assert proposal_threshold(0.0, plain) == ProposalThreshold(0.0, "setting")  # 0 is a value, not "unset"


def test_confirmation_source_order():
    plain = make_card(name="m", classes=["c"], detection=True)
    calibrated = make_card(name="m", classes=["c"], detection=True, score_threshold=0.12)
    confirmed = make_card(name="m", classes=["c"], detection=True)
    confirmed.detection = DetectionOperatingPoint(0.1, confirmation="segmentation")
    assert confirmation(None, None) == confirmation(None, plain) == confirmation(None, calibrated) == "none"
    assert confirmation(None, confirmed) == "segmentation"
    assert confirmation("none", confirmed) == "none" and confirmation("segmentation", plain) == "segmentation"


@pytest.mark.parametrize(
    ("boxes", "detects", "source", "expected"),
    [
        (True, True, "card", "boxes"),
        (True, False, "default", "boxes"),
        (False, True, "card", "proposals"),
        (False, True, "setting", "proposals"),
        (False, True, "default", "slices"),  # an uncalibrated detector: never an empty proposals answer
        (False, False, "setting", "slices"),
    ],
)
def test_auto_mode(boxes, detects, source, expected):
    point = ProposalThreshold(0.5, source)
    assert auto_mode(has_boxes=boxes, has_detection=detects, threshold=point) == expected


#: a strong nodule (score 1.0) and a faint one (score sigmoid(20 x 0.03) = 0.646, p over 0.5: foreground)
HU = np.full((3, 32, 32), -800.0)
HU[0, 4:8, 4:8] = 200.0
HU[1, 18:21, 2:5] = 3.0
BOTH = expected_labels(HU, (THRESHOLD_HU,))
STRONG = BOTH.copy()
STRONG[1] = 0


def _post(client, **data):
    files = [("dicom", (name, blob, "application/dicom")) for name, blob in series_files(ct_series(HU))]
    r = client.post("/segment", files=files, data=data)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    ("model", "setting", "mode", "threshold", "source", "mask"),
    [
        ("model_det", None, "slices", 0.5, "default", BOTH),  # uncalibrated: auto runs whole slices
        ("model_det", 0.5, "proposals", 0.5, "setting", BOTH),  # set explicitly: proposals
        ("model_det_calibrated", None, "proposals", 0.9, "card", STRONG),  # the card's 0.9 drops the faint one
        ("model_det_calibrated", 0.5, "proposals", 0.5, "setting", BOTH),  # the setting overrides the card
    ],
)
def test_auto_through_the_service(request, make_client, model, setting, mode, threshold, source, mask):
    overrides = {} if setting is None else {"proposal_score_threshold": setting}
    client = make_client(request.getfixturevalue(model), **overrides)
    described = client.get("/v1/model").json()
    assert described["detection"] is True and described["auto_mode"] == mode
    assert described["proposal_score_threshold"] == threshold and described["proposal_threshold_source"] == source
    body = _post(client)
    assert body["mode"] == mode
    np.testing.assert_array_equal(decode(body["mask"]), mask)
    if mode == "proposals":
        assert all(b["source"] == "detector" and b["score"] >= threshold for b in body["boxes"])


def test_uncalibrated_proposals_asked_for_use_the_default(make_client, model_det):
    """mode=proposals on an uncalibrated detector runs at 0.5 (both detections score over it)."""
    body = _post(make_client(model_det), mode="proposals")
    assert body["mode"] == "proposals"
    assert [c["score"] for c in body["components"]] == pytest.approx([1.0, 0.646], abs=1e-3)


def test_model_without_detection_reports_no_threshold(client):
    described = client.get("/v1/model").json()
    assert described["detection"] is False and described["auto_mode"] == "slices"
    assert described["proposal_score_threshold"] is None and described["proposal_threshold_source"] is None


def test_extend_threshold_setting_reaches_the_merge(monkeypatch):
    """MSDN_PROPOSAL_EXTEND_THRESHOLD: default 0.01, read from the environment, clamped to the operating one."""
    from msdn_core.proposals import DEFAULT_EXTEND_THRESHOLD
    from service.settings import Settings

    calibrated = make_card(name="m", classes=["c"], detection=True, score_threshold=0.12)
    default = Settings(_env_file=None).proposal_settings(calibrated)
    assert (default.score_threshold, default.extend_threshold) == (0.12, DEFAULT_EXTEND_THRESHOLD) == (0.12, 0.01)
    assert default.selection_threshold == 0.01
    monkeypatch.setenv("MSDN_PROPOSAL_EXTEND_THRESHOLD", "0.5")
    clamped = Settings(_env_file=None).proposal_settings(calibrated)
    assert clamped.extend_threshold == 0.5 and clamped.selection_threshold == 0.12  # single threshold
    monkeypatch.setenv("MSDN_PROPOSAL_EXTEND_THRESHOLD", "1.5")
    with pytest.raises(ValueError, match="proposal_extend_threshold"):
        Settings(_env_file=None)
