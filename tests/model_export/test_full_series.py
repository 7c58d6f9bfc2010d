"""Whole-series evaluation: reference nodules, per-series scores, and the CLI end to end (real ONNX Runtime)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from model_export.cli import main
from model_export.data.volumes import write_nifti
from model_export.full_series import (
    SeriesResult,
    evaluate_full_series,
    load_cases,
    reference_nodules,
    score_series,
    size_bin,
    strip_private,
    summarise,
)
from tests.service.helpers import make_settings
from tests.support.onnx_models import threshold_model


def test_size_bins():
    assert [size_bin(d) for d in (2.9, 3.0, 5.99, 6.0, 9.99, 10.0, 30.0)] == [
        "<3",
        "3-6",
        "3-6",
        "6-10",
        "6-10",
        "10-30",
        "10-30",
    ]


def test_reference_nodules_from_boxes_centres_or_volume():
    mask = np.zeros((6, 20, 20), np.uint8)
    mask[1:4, 2:5, 2:5] = 1  # 27 voxels
    mask[2:4, 10:14, 10:14] = 1  # 32 voxels
    boxed = {
        "nodules": [
            {"box3d": [10, 10, 2, 14, 14, 4], "diameter_mm": 7.5, "position": "juxta-pleural"},
            {"box3d": [2, 2, 1, 5, 5, 4], "diameter_mm": 4.0, "position": "isolated"},
        ]
    }
    inst, nodules = reference_nodules(mask, (1.0, 1.0, 1.0), boxed)
    assert [(n.id, n.diameter_mm, n.position, n.voxels) for n in nodules] == [
        (1, 7.5, "juxta-pleural", 32),
        (2, 4.0, "isolated", 27),
    ]
    assert inst[2, 11, 11] == 1 and inst[1, 2, 2] == 2
    # centre metadata (generator v4 style: one nodule): the other gets the diameter of its volume's sphere
    inst, nodules = reference_nodules(
        mask, (2.0, 1.0, 1.0), {"diameter_mm": 9.0, "position": "isolated", "centre_voxel": [2, 12, 12]}
    )
    by_voxels = {n.voxels: n for n in nodules}
    assert by_voxels[32].diameter_mm == 9.0 and by_voxels[32].position == "isolated"
    assert by_voxels[27].diameter_mm == pytest.approx((6 * 54 / math.pi) ** (1 / 3))  # 54 mm^3 -> 4.69 mm
    assert by_voxels[27].position == "unknown" and by_voxels[27].groups == ["all", "size 3-6", "position unknown"]


def test_score_series_by_hand():
    inst = np.zeros((4, 10, 10), np.int32)
    inst[1:3, 1:3, 1:3] = 1  # 8 voxels
    inst[1, 7:9, 7:9] = 2  # 4 voxels, missed
    labels = np.zeros(inst.shape, np.uint8)
    labels[1:3, 1:3, 1:4] = 1  # 12 voxels over nodule 1 (8 of them in it)
    labels[3, 5, 5] = 1  # a false positive
    comps = [  # as msdn_core.postprocess lists them
        {"score": 0.8, "centre": [2.0, 1.5, 1.5], "box": [1, 1, 1, 4, 3, 3], "voxels": 12},  # in nodule 1
        {"score": 0.4, "centre": [5.0, 5.0, 3.0], "box": [5, 5, 3, 6, 6, 4], "voxels": 1},
    ]
    nodules = reference_nodules(inst > 0, (1.0, 1.0, 1.0))[1]
    result = SimpleNamespace(labels=labels, components=comps)
    out = score_series("c", "slices", result, inst, nodules, (1.0, 1.0, 1.0), 1.5)
    assert out.match.hits == {1: 0.8} and out.match.false_positives == [0.4] and out.fp_components == 1
    first, second = out.per_nodule
    assert first["detected"] and first["dice"] == pytest.approx(2 * 8 / (12 + 8))
    assert first["volume_error_pct"] == pytest.approx(50.0)
    assert not second["detected"] and "dice" not in second
    # whole series: 8 shared voxels, 13 predicted, 12 reference
    assert out.series_dice == pytest.approx(16 / 25)
    # operating point 0.5: the 0.4 component stays a FROC candidate but leaves the answer
    op = score_series("c", "proposals", result, inst, nodules, (1.0, 1.0, 1.0), 1.5, operating_threshold=0.5)
    assert op.match.false_positives == [0.4] and op.fp_components == 0
    assert op.series_dice == pytest.approx(16 / 24) and op.per_nodule[0]["dice"] == pytest.approx(0.8)
    high = score_series("c", "proposals", result, inst, nodules, (1.0, 1.0, 1.0), 1.5, operating_threshold=0.9)
    assert high.match.hits == {1: 0.8} and not high.per_nodule[0]["detected"] and high.series_dice == 0.0
    assert out.detection_match is None and summarise([out])["froc_by_detection_score"] is None
    # confirmed proposals: ranked by the confirmed score, and by the detection score alone beside it
    confirmed = [dict(comps[0], score=0.3, detection_score=0.6), dict(comps[1], score=0.35, detection_score=0.5)]
    res = score_series(
        "c", "proposals", SimpleNamespace(labels=labels, components=confirmed), inst, nodules, (1, 1, 1), 1
    )
    assert res.match.hits == {1: 0.3} and res.match.false_positives == [0.35]
    assert res.detection_match.hits == {1: 0.6} and res.detection_match.false_positives == [0.5]
    back = SeriesResult.from_json(json.loads(json.dumps(res.to_json())))
    assert back.detection_match == res.detection_match
    # 1 series: ranked by detection the nodule comes first (sensitivity 0.5 at 0 FP); confirmed, after the FP
    assert summarise([res])["froc_by_detection_score"]["0.125"] == 0.5
    assert summarise([res])["groups"]["all"]["froc"]["0.125"] == 0.0


def write_case(root: Path, cid: str, hu: np.ndarray, mask: np.ndarray) -> None:
    write_nifti(root / f"{cid}.nii.gz", hu.astype(np.int16), spacing=(1.0, 1.0, 1.0))
    write_nifti(root / f"{cid}_mask.nii.gz", mask.astype(np.uint8), spacing=(1.0, 1.0, 1.0))


def tiny_benchmark(tmp_path: Path) -> tuple[Path, Path]:
    """Two series and a thresholding model with grid-cell detection: every number follows by hand."""
    model = tmp_path / "det.onnx"
    threshold_model(model, thresholds_hu=(0.0,), classes=["nodule"], std=100.0, detection_cell=8)
    hu_a = np.full((6, 32, 32), -800.0)
    mask_a = np.zeros(hu_a.shape, np.uint8)
    mask_a[1:4, 4:8, 4:8] = 1  # nodule, 48 voxels, 5 mm
    hu_a[mask_a > 0] = 200.0
    hu_a[2:4, 20:24, 20:24] = 200.0  # a bright blob that is no nodule: 32 voxels
    hu_b = np.full((6, 32, 32), -800.0)
    mask_b = np.zeros(hu_b.shape, np.uint8)
    mask_b[2:5, 20:26, 10:16] = 1  # 108 voxels over two detector cells, 7 mm
    hu_b[mask_b > 0] = 200.0
    write_case(tmp_path, "a", hu_a, mask_a)
    write_case(tmp_path, "b", hu_b, mask_b)
    nod = {"shape": "round", "density": "solid", "label": 1}
    manifest = {
        "format_version": 1,
        "classes": [{"value": 1, "name": "nodule"}],
        "cases": [
            {
                "id": "a",
                "split": "test",
                "image": "a.nii.gz",
                "mask": "a_mask.nii.gz",
                "meta": {"nodules": [dict(nod, box3d=[4, 4, 1, 8, 8, 4], diameter_mm=5.0, position="isolated")]},
            },
            {
                "id": "b",
                "split": "test",
                "image": "b.nii.gz",
                "mask": "b_mask.nii.gz",
                "meta": {
                    "nodules": [dict(nod, box3d=[10, 20, 2, 16, 26, 5], diameter_mm=7.0, position="juxta-pleural")]
                },
            },
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return model, tmp_path / "manifest.json"


def test_cli_full_series_end_to_end(tmp_path):
    model, manifest_path = tiny_benchmark(tmp_path)
    out = tmp_path / "out"
    rc = main(
        [
            "evaluate",
            "--full-series",
            "--model",
            str(model),
            "--manifest",
            str(tmp_path / "manifest.json"),
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "table.md", "results.csv", "per_nodule.csv", "froc.png"}
    report = json.loads((out / "report.json").read_text())
    for mode in ("slices", "proposals"):
        s = report["modes"][mode]
        # TPs and the FP all score 1.0: at that threshold 2/2 nodules with 1 FP over 2 scans (0.5 per scan)
        froc = s["groups"]["all"]["froc"]
        assert [froc[r] for r in ("0.125", "0.25", "0.5", "1", "8")] == [0.0, 0.0, 1.0, 1.0, 1.0]
        assert froc["cpm"] == pytest.approx(5 / 7)
        assert s["fp_per_scan"] == 0.5
        assert s["groups"]["all"]["dice"] == pytest.approx(1.0)
        assert s["groups"]["size 3-6"]["nodules"] == 1 and s["groups"]["size 6-10"]["nodules"] == 1
        assert s["groups"]["position juxta-pleural"]["detected"] == 1
        # series a: 2 x 48 / (80 + 48) = 0.75; series b: 1
        assert s["series_dice"] == pytest.approx((0.75 + 1.0) / 2)
    boxes = report["modes"]["boxes"]
    assert boxes["groups"]["all"]["froc"]["cpm"] == 1.0 and boxes["fp_per_scan"] == 0.0
    assert boxes["series_dice"] == pytest.approx(1.0)
    assert "| proposals | 0.000 | 0.000 | 1.000 |" in (out / "table.md").read_text()
    assert len((out / "per_nodule.csv").read_text().splitlines()) == 1 + 3 * 2


def test_cli_full_series_needs_a_model(tmp_path, capsys):
    assert main(["evaluate", "--full-series", "--manifest", str(tmp_path / "m.json")]) == 2
    assert "--model" in capsys.readouterr().err


def test_a_stopped_run_resumes_from_its_cache(tmp_path):
    model, manifest_path = tiny_benchmark(tmp_path)
    cases = load_cases(manifest_path)
    cache = tmp_path / "series.jsonl"
    first = evaluate_full_series(model, cases[:1], threads=1, cache=cache)
    assert len(cache.read_text().splitlines()) == 3  # one series, three modes
    again = evaluate_full_series(model, cases, threads=1, cache=cache)
    assert len(cache.read_text().splitlines()) == 6  # only the second series was run
    assert again["per_series"][0] == first["per_series"][0]  # the cached record, timings included
    fresh = evaluate_full_series(model, cases, threads=1)
    assert strip_private(again)["modes"]["proposals"]["groups"] == strip_private(fresh)["modes"]["proposals"]["groups"]
    # slices answers from the proposals run's pass score as separate slices runs do
    separate = evaluate_full_series(model, cases, threads=1, shared_pass=False)
    for mode in ("slices", "proposals"):
        assert strip_private(separate)["modes"][mode]["groups"] == strip_private(fresh)["modes"][mode]["groups"]
    assert all(r["cpu_seconds"] is None for r in fresh["per_series"] if r["mode"] == "slices")
    assert all(r["cpu_seconds"] is not None for r in separate["per_series"])


def _faint_ends_benchmark(tmp_path: Path) -> Path:
    """One series: a nodule on slices 1-5 (80 voxels) whose detector scores 1.0 on slice 3 only and
    0.646 on the others (3 HU, still foreground), and a faint blob (0.646, no nodule)."""
    model = tmp_path / "det.onnx"
    threshold_model(model, thresholds_hu=(0.0,), classes=["nodule"], std=100.0, detection_cell=8)
    hu = np.full((8, 32, 32), -800.0)
    mask = np.zeros(hu.shape, np.uint8)
    mask[1:6, 2:6, 2:6] = 1
    hu[mask > 0] = 3.0
    hu[3, 2:6, 2:6] = 200.0
    hu[2:4, 20:24, 20:24] = 3.0
    write_case(tmp_path, "f", hu, mask)
    nodule = {"box3d": [2, 2, 1, 6, 6, 6], "diameter_mm": 5.0, "position": "isolated", "label": 1}
    case = {"id": "f", "split": "test", "image": "f.nii.gz", "mask": "f_mask.nii.gz", "meta": {"nodules": [nodule]}}
    manifest = {"format_version": 1, "classes": [{"value": 1, "name": "nodule"}], "cases": [case]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return model


def _operating(report):
    s = report["modes"]["proposals"]
    return s["fp_per_scan"], s["groups"]["all"]["detected"], s["series_dice"]


def test_the_froc_run_gives_what_the_service_gives_at_the_operating_threshold(tmp_path):
    """Two thresholds: the low FROC run's components scoring >= 0.9 are those of a run at 0.9 (the
    nodule's 5 slices: Dice 1, the faint blob dropped); with a single threshold the run at 0.9 segments
    slice 3 and its z margin only (48 of 80 voxels: Dice 96/128), so the FROC run would not be it."""
    model = _faint_ends_benchmark(tmp_path)
    cases = load_cases(tmp_path / "manifest.json")
    kw = dict(modes=["proposals"], threads=1, operating_threshold=0.9)
    two = make_settings(model)
    froc_run = evaluate_full_series(model, cases, froc_threshold=0.01, settings=two, **kw)
    at_t = evaluate_full_series(model, cases, froc_threshold=None, settings=two, **kw)
    assert _operating(froc_run) == _operating(at_t) == (0.0, 1, pytest.approx(1.0))
    assert froc_run["per_series"][0]["fp_components"] == 0 and froc_run["settings"]["proposal_extend_threshold"] == 0.01
    # the FROC run saw the faint blob (a false positive under 0.9), the run at 0.9 did not
    assert froc_run["modes"]["proposals"]["groups"]["all"]["froc"]["8"] == 1.0
    single = make_settings(model, proposal_extend_threshold=1.0)
    old = evaluate_full_series(model, cases, froc_threshold=None, settings=single, **kw)
    assert _operating(old) == (0.0, 1, pytest.approx(96 / 128))
    # a cache of the single-threshold run is not reused for the two-threshold run (and the other way)
    cache = tmp_path / "c.jsonl"
    evaluate_full_series(model, cases, froc_threshold=None, settings=single, cache=cache, **kw)
    again = evaluate_full_series(model, cases, froc_threshold=None, settings=two, cache=cache, **kw)
    assert _operating(again) == _operating(at_t) and len(cache.read_text().splitlines()) == 2
