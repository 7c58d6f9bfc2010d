"""Proposal threshold calibration: the choice by hand, the card it writes, and ``msdn calibrate`` end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from model_export.cli import main
from model_export.full_series import load_cases
from model_export.proposal_threshold import calibrate, choose_threshold, write_operating_point
from msdn_core.card import DetectionCalibration, DetectionOperatingPoint
from msdn_core.digest import file_sha256
from msdn_core.froc import ScanMatch
from msdn_core.onnx_model import (
    ModelFileError,
    card_from_model,
    inspect_model,
    load_onnx,
    read_card,
    read_sidecar_with_sha,
    save_model,
    variant_path,
)
from service.model import ModelRuntime
from tests.model_export.test_full_series import write_case
from tests.service.helpers import make_settings
from tests.support.onnx_models import threshold_model

# --- the choice, on hand-made candidate lists ------------------------------------------------------

#: 3 scans, 3 nodules; false positives 0.1 0.2 0.4 0.5 0.5 0.8 (6), hits 0.9 0.3 (scan a), 0.6 (scan b)
SCANS = [
    ScanMatch(nodules=[1, 2], hits={1: 0.9, 2: 0.3}, false_positives=[0.8, 0.4, 0.2]),
    ScanMatch(nodules=[1], hits={1: 0.6}, false_positives=[0.5, 0.5]),
    ScanMatch(nodules=[], hits={}, false_positives=[0.1]),
]


@pytest.mark.parametrize(
    ("target", "threshold", "fp", "sensitivity"),
    [
        (1.0, 0.5, 1.0, 2 / 3),  # >= 0.5: FPs 0.5, 0.5, 0.8 = 3 over 3 scans; the tied 0.5s are kept together
        (0.7, 0.6, 1 / 3, 2 / 3),  # the tie at 0.5 would make 3 > 2.1: not split, the next score up
        (0.5, 0.6, 1 / 3, 2 / 3),
        (0.0, 0.9, 0.0, 1 / 3),  # no false positive at all: only the 0.9 hit is above the 0.8 FP
        (2.0, 0.1, 2.0, 1.0),  # everything kept: the lowest candidate score
        (1.5, 0.3, 4 / 3, 1.0),  # >= 0.3: 4 FPs (0.4 0.5 0.5 0.8), every hit
    ],
)
def test_lowest_threshold_within_the_target(target, threshold, fp, sensitivity):
    choice = choose_threshold(SCANS, fp_per_scan_target=target)
    assert choice.score_threshold == threshold
    assert choice.fp_per_scan == pytest.approx(fp) and choice.sensitivity == pytest.approx(sensitivity)
    assert (choice.series, choice.nodules, choice.fp_per_scan_target) == (3, 3, target)


def test_capped_series_keep_the_threshold_above_their_lowest_score():
    choice = choose_threshold(SCANS, fp_per_scan_target=1.0, min_threshold=0.55)
    assert choice.score_threshold == 0.6 and "capped" in choice.reason


def test_no_candidate_gives_no_threshold():
    choice = choose_threshold([ScanMatch(nodules=[1]), ScanMatch()], fp_per_scan_target=1.0)
    assert choice.score_threshold is None and choice.fp_per_scan is None and "no candidate" in choice.reason


@pytest.mark.parametrize(
    "scans",
    [
        [ScanMatch(nodules=[1], hits={1: 0.3}, false_positives=[0.9, 0.8])],  # FPs on top: only t > 0.9 meets 0
        [ScanMatch(nodules=[1], hits={1: 0.2}, false_positives=[0.9])],  # within 0 FP, no nodule is left
        [ScanMatch(nodules=[1], hits={1: 0.7}, false_positives=[0.7])],  # tied with a false positive
        [ScanMatch(nodules=[], false_positives=[0.4])],  # nothing to find
    ],
)
def test_unreachable_target_gives_no_threshold(scans):
    choice = choose_threshold(scans, fp_per_scan_target=0.0)
    assert choice.score_threshold is None and "unreachable" in choice.reason


def test_choice_arguments_are_checked():
    with pytest.raises(ValueError, match="at least one scan"):
        choose_threshold([])
    with pytest.raises(ValueError, match="fp_per_scan_target"):
        choose_threshold(SCANS, fp_per_scan_target=-1.0)
    with pytest.raises(ValueError, match="fp_per_scan_target"):
        choose_threshold(SCANS, fp_per_scan_target=math.nan)


# --- the card it writes ----------------------------------------------------------------------------

POINT = DetectionOperatingPoint(
    0.125,
    DetectionCalibration(split="val", series=2, nodules=3, fp_per_scan_target=1.0, fp_per_scan=0.5, sensitivity=2 / 3),
)


def _export(path: Path, *, precision: str = "fp32", checkpoint: str | None = "c0ffee", detection: bool = True) -> Path:
    """A detecting threshold model saved as ``msdn export`` saves (embedded card, sidecar with SHA-256)."""
    threshold_model(path, thresholds_hu=(0.0,), classes=["nodule"], std=100.0, detection_cell=8 if detection else None)
    model = load_onnx(path)
    card = card_from_model(model)
    loss = None if precision == "fp32" else 0.1
    save_model(
        model,
        path,
        dataclasses.replace(card, precision=precision, checkpoint_sha256=checkpoint, variant_dice_loss=loss),
    )
    return path


def test_operating_point_round_trip_with_variants(tmp_path):
    fp32 = _export(tmp_path / "m.onnx")
    int8 = _export(variant_path(fp32, "int8"), precision="int8")
    fp16 = _export(variant_path(fp32, "fp16"), precision="fp16", checkpoint="0ther")
    fp16_bytes = fp16.read_bytes()
    files = write_operating_point(fp32, POINT)
    assert files == {"written": [fp32, int8], "skipped": [fp16]}
    for path, precision in ((fp32, "fp32"), (int8, "int8")):
        card, expected_sha = read_card(path)
        assert card.detection == POINT and card.precision == precision
        assert expected_sha == file_sha256(path)  # the sidecar follows the new bytes
        sidecar, _ = read_sidecar_with_sha(path)
        assert sidecar == card  # embedded and sidecar say the same
        assert inspect_model(path).card == card  # graph checksum and tensor names still check
    assert read_card(int8)[0].variant_dice_loss == 0.1
    assert fp16.read_bytes() == fp16_bytes  # another checkpoint's variant is left alone
    # the service loads both with the SHA check on, and takes the threshold from the served file's card
    rt = ModelRuntime.load(fp32, providers=["CPUExecutionProvider"], precision="fp32", verify_sha256=True)
    assert rt.card.score_threshold == 0.125
    rt8 = ModelRuntime.load(fp32, providers=["CPUExecutionProvider"], precision="int8", verify_sha256=True)
    assert rt8.path == int8 and rt8.card.score_threshold == 0.125


def test_operating_point_is_refused_where_it_means_nothing(tmp_path):
    plain = _export(tmp_path / "plain.onnx", detection=False)
    with pytest.raises(ModelFileError, match="no detection outputs"):
        write_operating_point(plain, POINT)
    variant = _export(tmp_path / "v.int8.onnx", precision="int8")
    with pytest.raises(ModelFileError, match="calibrate the fp32 export"):
        write_operating_point(variant, POINT)


# --- msdn calibrate on two series, every number by hand ---------------------------------------------

P_NODULE_B = 1.0 / (1.0 + math.exp(-2.0))  # 10 HU: normalised 0.1, logit 20 x 0.1
P_FAINT = 1.0 / (1.0 + math.exp(-0.6))  # 3 HU


def _validation_set(tmp_path: Path) -> tuple[Path, Path]:
    """Series a: a nodule (score 1.0) and a faint blob (0.646, no nodule); series b: a nodule scoring
    0.881 and a bright blob (1.0, no nodule). Each blob lies in one 8 x 8 detector cell."""
    model = _export(tmp_path / "det.onnx")
    cases = []
    for cid, nodule, nodule_hu, blob, blob_hu in (
        ("a", np.s_[1:4, 10:14, 10:14], 200.0, np.s_[2:4, 26:30, 26:30], 3.0),
        ("b", np.s_[2:5, 18:22, 18:22], 10.0, np.s_[1:3, 34:38, 2:6], 200.0),
    ):
        hu = np.full((6, 48, 48), -800.0)
        mask = np.zeros(hu.shape, np.uint8)
        mask[nodule] = 1
        hu[nodule], hu[blob] = nodule_hu, blob_hu
        write_case(tmp_path, cid, hu, mask)
        cases.append({"id": cid, "split": "val", "image": f"{cid}.nii.gz", "mask": f"{cid}_mask.nii.gz"})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format_version": 1, "classes": [{"value": 1, "name": "nodule"}], "cases": cases}))
    return model, manifest


@pytest.mark.parametrize(
    ("target", "threshold", "fp", "dice"),
    [
        (1.0, P_FAINT, 1.0, 0.75),  # all kept: each series 48 nodule voxels against 48 + 32 predicted
        (0.5, P_NODULE_B, 0.5, (1.0 + 0.75) / 2),  # the faint blob of a goes, b's bright blob stays
    ],
)
def test_calibrate_two_series(tmp_path, target, threshold, fp, dice):
    model, manifest = _validation_set(tmp_path)
    cases = load_cases(manifest, split="val")
    result = calibrate(model, cases, fp_per_scan_target=target, settings=make_settings(model), manifest="m.json")
    assert result.choice.score_threshold == pytest.approx(threshold, abs=1e-6)
    assert result.choice.fp_per_scan == fp and result.choice.sensitivity == 1.0
    assert [s.capped_at for s in result.series] == [None, None]
    assert [(s.nodules, s.detected) for s in result.series] == [(1, 1), (1, 1)]  # the runs at the threshold
    c = result.point.calibration
    assert (c.split, c.series, c.nodules, c.fp_per_scan_target, c.floor, c.manifest) == (
        "val",
        2,
        2,
        target,
        0.01,
        "m.json",
    )
    assert c.mean_series_dice == pytest.approx(dice)
    assert (c.fp_per_scan, c.sensitivity) == (fp, 1.0)


@pytest.mark.parametrize(
    ("target", "threshold"),
    [
        # confirmed scores: a's nodule 1 x 1, a's faint blob 0.646 x 165/255, b's nodule 0.881 x 225/255,
        # b's bright blob 1 x 1 (whole-slice probabilities as uint8)
        (1.0, P_FAINT * 165 / 255),
        (0.5, P_NODULE_B * 225 / 255),
    ],
)
def test_calibrate_on_confirmed_scores(tmp_path, target, threshold):
    model, manifest = _validation_set(tmp_path)
    cases = load_cases(manifest, split="val")
    settings = make_settings(model)
    result = calibrate(model, cases, fp_per_scan_target=target, settings=settings, confirmation="segmentation")
    assert result.choice.score_threshold == pytest.approx(threshold, abs=1e-5)
    assert result.point.confirmation == "segmentation" and result.choice.sensitivity == 1.0
    assert result.point.calibration.fp_per_scan == target
    with pytest.raises(ValueError, match="confirmation must be one of"):
        calibrate(model, cases, settings=settings, confirmation="yes")
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        calibrate(model, cases, settings=settings, max_steps=0)


def test_int8_variant_calibrated_on_its_own_scores(tmp_path, capsys):
    """``--precision int8`` runs the int8 file and writes its card only; the service then may serve it."""
    model, manifest = _validation_set(tmp_path)
    int8 = _export(variant_path(model, "int8"), precision="int8")  # same graph: the scores of the hand values
    auto = dict(providers=["CPUExecutionProvider"], precision="auto", int8_needs_vnni=False)
    assert ModelRuntime.load(model, **auto).card.precision == "fp32"  # int8 detector not validated yet
    fp32_before = model.read_bytes()
    base = ["calibrate", str(model), "--manifest", str(manifest), "--fp-per-scan", "0.5"]
    assert main(base + ["--precision", "int8"]) == 0
    assert model.read_bytes() == fp32_before  # the fp32 file keeps its own (here: none)
    card, sha = read_card(int8)
    assert card.detection.calibration.precision == "int8" and sha == file_sha256(int8)
    assert card.score_threshold == pytest.approx(P_NODULE_B, abs=1e-6)
    served = ModelRuntime.load(model, **auto)
    assert served.card.precision == "int8" and served.path == int8
    # a later fp32 calibration writes the fp32 card and copies to the int8 one (calibrated on fp32 again)
    assert main(base) == 0
    assert read_card(int8)[0].detection.calibration.precision == "fp32"
    assert ModelRuntime.load(model, **auto).card.precision == "fp32"
    with pytest.raises(ModelFileError, match="no int8 variant"):
        write_operating_point(_export(tmp_path / "b.onnx"), POINT, variant="int8")


def test_msdn_calibrate_writes_the_card_or_leaves_it(tmp_path, capsys):
    model, manifest = _validation_set(tmp_path)
    before = model.read_bytes()
    base = ["calibrate", str(model), "--manifest", str(manifest)]
    assert main(base + ["--fp-per-scan", "0", "--json", str(tmp_path / "none.json")]) == 1  # b's FP ties its top
    assert model.read_bytes() == before and "left uncalibrated" in capsys.readouterr().out
    assert json.loads((tmp_path / "none.json").read_text())["detection"] is None
    assert main(base + ["--fp-per-scan", "0.5", "--dry-run"]) == 0
    assert model.read_bytes() == before
    assert main(base + ["--fp-per-scan", "0.5"]) == 0
    assert "written" in capsys.readouterr().out
    card, sha = read_card(model)
    assert card.score_threshold == pytest.approx(P_NODULE_B, abs=1e-6) and sha == file_sha256(model)
    assert card.confirmation == "none"
    assert main(base + ["--fp-per-scan", "0.5", "--confirmation", "segmentation"]) == 0
    card, _ = read_card(model)
    assert card.confirmation == "segmentation"
    assert card.score_threshold == pytest.approx(P_NODULE_B * 225 / 255, abs=1e-5)
    assert main(["calibrate", str(model), "--manifest", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize(("extend", "recorded_extend", "dice"), [(None, 0.01, 1.0), (1.0, 1.0, 0.75)])
def test_calibrate_records_the_service_runs_with_two_thresholds(tmp_path, extend, recorded_extend, dice):
    """A nodule on slices 1-5 whose detector scores 1.0 on slice 3 only (0.646 on the others) and a faint
    blob (0.646, no nodule): at the FP target 0 the threshold is the nodule's 1.0. The runs at it with
    the extension threshold 0.01 (default) keep the nodule's 5 slices (Dice 1); with one threshold
    (extension 1, clamped to t) the candidate is slice 3 and its z margin: 3 of 5 slices, Dice 6/8."""
    model = _export(tmp_path / "det.onnx")
    hu = np.full((8, 48, 48), -800.0)
    mask = np.zeros(hu.shape, np.uint8)
    mask[1:6, 10:14, 10:14] = 1
    hu[mask > 0] = 3.0  # p = 0.646: foreground, detection score 0.646
    hu[3, 10:14, 10:14] = 200.0  # p = 1
    hu[2:4, 34:38, 34:38] = 3.0  # faint blob, no nodule
    write_case(tmp_path, "c", hu, mask)
    case = {"id": "c", "split": "val", "image": "c.nii.gz", "mask": "c_mask.nii.gz"}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format_version": 1, "classes": [{"value": 1, "name": "n"}], "cases": [case]}))
    overrides = {} if extend is None else {"proposal_extend_threshold": extend}
    settings = make_settings(model, **overrides)
    result = calibrate(model, load_cases(manifest, split="val"), fp_per_scan_target=0.0, settings=settings)
    t = result.choice.score_threshold
    assert t == pytest.approx(1.0, abs=1e-6) and result.choice.fp_per_scan == 0.0
    c = result.point.calibration
    assert (c.fp_per_scan, c.sensitivity) == (0.0, 1.0)
    assert c.extend_threshold == pytest.approx(min(recorded_extend, t))
    assert c.mean_series_dice == pytest.approx(dice)
