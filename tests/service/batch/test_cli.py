"""``msdn segment``: real files on disk, the real ONNX models, outputs read back independently."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

from model_export.cli import main
from service.batch.inputs import find_studies
from service.outputs.rle import decode
from tests.service.helpers import THRESHOLD_HU
from tests.support.dicom_series import ct_series, phantom, to_bytes
from tests.support.onnx_models import expected_labels

ROOT = Path(__file__).resolve().parents[3]


def _write_series(folder: Path, hu: np.ndarray, **options) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(ct_series(hu, **options)):
        (folder / f"{options.get('series_uid', 's')[-4:]}_{i:03d}.dcm").write_bytes(to_bytes(ds))


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as fh:
        return {row["study"]: row for row in csv.DictReader(fh)}


def test_sample_seg_equals_json_mask(tmp_path):
    out = tmp_path / "out"
    rc = main(
        ["segment", str(ROOT / "samples/chest_case"), "-o", str(out), "--model", str(ROOT / "models/default.onnx")]
        + ["--format", "seg", "--format", "json", "--preview", "--no-progress", "--mode", "slices"]
        + ["--reference", str(ROOT / "samples/chest_case_mask.nii.gz")]
    )
    assert rc == 0
    study = out / "chest_case"
    report = json.loads((study / "segmentation.json").read_text())
    mask = decode(report["mask"])
    assert mask.shape == (40, 256, 256) and mask.sum() > 0
    seg = hd.seg.segread(study / "segmentation.dcm")
    datasets = sorted(
        (pydicom.dcmread(p) for p in (ROOT / "samples/chest_case").iterdir()),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    back = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in datasets], combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(back, mask)
    row = _summary(out)["chest_case"]
    assert int(row["nodule_voxels"]) == int(mask.sum()) and row["error_code"] == ""
    assert float(row["nodule_dice"]) == round(report["metrics"]["classes"][0]["dice"], 4)
    assert Image.open(study / "preview.png").format == "PNG"


def test_batch_with_a_broken_study(tmp_path, model_1c):
    studies = tmp_path / "studies"
    hu_a, hu_b, hu_c = phantom((3, 24, 24), seed=1), phantom((4, 24, 24), seed=2), phantom((2, 24, 24), seed=5)
    _write_series(studies / "a", hu_a, series_uid="1.2.826.0.1.3680043.8.498.1001")
    # one folder, two series: split by SeriesInstanceUID
    _write_series(studies / "b", hu_b, series_uid="1.2.826.0.1.3680043.8.498.2001")
    _write_series(studies / "b", hu_c, series_uid="1.2.826.0.1.3680043.8.498.2002", origin=(0.0, 0.0, 500.0))
    (studies / "broken").mkdir()
    (studies / "broken" / "x.dcm").write_bytes(b"not a dicom file")
    nifti = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(hu_a.transpose(2, 1, 0).astype(np.int16), np.diag([0.75, 0.75, 2.5, 1])), nifti)

    found = {s.name: s for s in find_studies([studies, nifti])}
    assert set(found) == {"a", "b", "b_2", "broken", "vol"}
    assert {found["b"].series_uid, found["b_2"].series_uid} == {
        "1.2.826.0.1.3680043.8.498.2001",
        "1.2.826.0.1.3680043.8.498.2002",
    }

    out = tmp_path / "out"
    args = ["segment", str(studies), str(nifti), "-o", str(out), "--model", str(model_1c), "--no-progress"]
    assert main(args + ["--workers", "2", "--format", "seg", "--format", "nifti"]) == 1  # a study failed
    rows = _summary(out)
    assert list(rows) == ["a", "b", "b_2", "broken", "vol"]
    assert rows["broken"]["error_code"] == "not_dicom" and "x.dcm" in rows["broken"]["error"]
    for name, hu in (("a", hu_a), ("vol", hu_a)):
        assert int(rows[name]["tissue_voxels"]) == int(expected_labels(hu, (THRESHOLD_HU,)).sum())
        assert rows[name]["error_code"] == ""
    by_series = {rows[n]["series"]: int(rows[n]["tissue_voxels"]) for n in ("b", "b_2")}
    assert by_series["1.2.826.0.1.3680043.8.498.2002"] == int(expected_labels(hu_c, (THRESHOLD_HU,)).sum())
    assert (out / "a" / "segmentation.dcm").is_file() and (out / "a" / "mask.nii.gz").is_file()
    assert not (out / "vol" / "segmentation.dcm").exists() and (out / "vol" / "mask.nii.gz").is_file()
    assert json.loads((out / "broken" / "error.json").read_text())["code"] == "not_dicom"

    # resumable: finished studies are skipped, the broken one is tried again
    before = (out / "a" / "done.json").stat().st_mtime_ns
    assert main(args + ["--format", "seg", "--format", "nifti"]) == 1
    rows = _summary(out)
    assert rows["a"]["skipped"] == "yes" and rows["broken"]["skipped"] == "" and rows["broken"]["error_code"]
    assert (out / "a" / "done.json").stat().st_mtime_ns == before
    # another model (SHA-256) is not "done"
    done = json.loads((out / "a" / "done.json").read_text())
    (out / "a" / "done.json").write_text(json.dumps({**done, "model_sha256": "0" * 64}))
    main(args + ["--format", "seg", "--format", "nifti"])
    assert _summary(out)["a"]["skipped"] == ""


def test_manifest_cases_with_reference_and_boxes(tmp_path, model_1c):
    hu = phantom((3, 24, 24), seed=7)
    _write_series(tmp_path / "dicom" / "c1", hu, series_uid="1.2.826.0.1.3680043.8.498.3001")
    labels = expected_labels(hu, (THRESHOLD_HU,))
    ref = tmp_path / "c1_mask.npy"
    np.save(ref, labels)
    manifest = {
        "format_version": 1,
        "cases": [
            {"id": "case1", "image": "dicom/c1", "boxes": [{"box3d": [2, 2, 0, 20, 20, 3], "label": 1}]},
            {"id": "case2", "image": "dicom/c1"},
        ],
    }
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "m.json"), "-o", str(out), "--model", str(model_1c), "--no-progress"]) == 0
    rows = _summary(out)
    assert rows["case1"]["mode"] == "boxes" and rows["case2"]["mode"] == "slices"
    mask = decode(json.loads((out / "case1" / "segmentation.json").read_text())["mask"])
    inside = np.zeros_like(labels)
    inside[:, 2:20, 2:20] = labels[:, 2:20, 2:20]
    np.testing.assert_array_equal(mask, inside)


def test_an_anonymised_folder_with_a_license_file_is_segmented(tmp_path, model_1c):
    """Issue 23's Siemens case: an anonymiser blanked Study/Series/SOP Instance UIDs and left a LICENSE
    beside the files. The files are one series (grouped by geometry), the LICENSE is left out, the JSON
    and NIfTI answers come, and the SEG the UIDs are missing for is refused saying so."""
    folder = tmp_path / "anon"
    folder.mkdir()
    hu = phantom((3, 24, 24), seed=4)
    for i, ds in enumerate(ct_series(hu)):
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
        (folder / f"IM{i:04d}").write_bytes(to_bytes(ds))
    (folder / "LICENSE").write_text("CC-BY 4.0\n")
    (study,) = find_studies([folder])
    assert len(study.files) == 3 and study.series_uid is None
    out = tmp_path / "out"
    args = ["segment", str(folder), "-o", str(out), "--model", str(model_1c), "--no-progress"]
    assert main(args + ["--format", "json", "--format", "nifti"]) == 0
    row = _summary(out)["anon"]
    assert row["error_code"] == "" and int(row["tissue_voxels"]) == int(expected_labels(hu, (THRESHOLD_HU,)).sum())
    assert row["series"].startswith("2.25.")  # derived from the frame of reference and geometry
    report = json.loads((out / "anon" / "segmentation.json").read_text())
    assert report["input"]["series_uid_derived"] is True
    assert main(args + ["--format", "seg", "-o", str(tmp_path / "out_seg")]) == 1
    error = json.loads((tmp_path / "out_seg" / "anon" / "error.json").read_text())
    assert error["code"] == "seg_not_built" and "UID" in error["message"], error
