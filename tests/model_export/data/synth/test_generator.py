"""``msdn synth`` data sets: manifest, splits, determinism, files that the data contract accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_export.cli import main
from model_export.data.manifest import boxes_from_mask, load_manifest
from model_export.data.synth import (
    TASKS,
    generate,
    generate_case,
    parse_split,
    resolve_split,
)
from model_export.data.volumes import read_volume

TINY = {"lung": dict(size=128, slices=12, version=4), "cochlea": dict(size=128, slices=12, version=4)}


@pytest.mark.parametrize("task", ["lung", "cochlea"])
def test_same_seed_gives_byte_identical_arrays(task: str):
    a = generate_case(task, 3, seed=7, **TINY[task])
    b = generate_case(task, 3, seed=7, **TINY[task])
    assert a.image.dtype == np.int16 and a.mask.dtype == np.uint8
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.meta == b.meta and a.spacing == b.spacing and a.origin == b.origin
    other_seed = generate_case(task, 3, seed=8, **TINY[task])
    other_case = generate_case(task, 4, seed=7, **TINY[task])
    assert not np.array_equal(a.image, other_seed.image) and not np.array_equal(a.image, other_case.image)


@pytest.mark.parametrize("task", ["lung", "cochlea"])
def test_generate_writes_a_valid_manifest(tmp_path: Path, task: str):
    path = generate(task, tmp_path / task, num_cases=3, seed=1, **TINY[task])
    assert path == tmp_path / task / "manifest.json"
    m = load_manifest(path)  # opens every file: shapes, geometry, labels
    assert [c.id for c in m.cases] == [f"{task}_000", f"{task}_001", f"{task}_002"]
    assert [c.split for c in m.cases] == ["train", "val", "test"]
    assert m.class_names == [{"lung": "nodule", "cochlea": "cochlea"}[task]] and m.modality == "CT"
    raw = json.loads(path.read_text())
    assert raw["generator"] == {
        "tool": "msdn synth",
        "version": 4,
        "task": task,
        "seed": 1,
        "size": 128,
        "slices": 12,
        "dicom": False,
        "split": {"train": 1, "val": 1, "test": 1},
    }
    for i, case in enumerate(m.cases):
        expected = generate_case(task, i, seed=1, **TINY[task])
        image, mask = read_volume(case.image, dtype=np.int16), read_volume(case.mask, dtype=np.uint8)
        np.testing.assert_array_equal(image.array, expected.image)
        np.testing.assert_array_equal(mask.array, expected.mask)
        assert mask.array.any() and set(np.unique(mask.array)) == {0, 1}
        assert image.spacing == pytest.approx(expected.spacing)
        np.testing.assert_allclose(image.affine_ras, expected.ras_affine())
        assert raw["cases"][i]["meta"]["shape_zyx"] == [12, 128, 128]


def test_files_are_byte_identical_across_runs_and_worker_counts(tmp_path: Path):
    a = generate("cochlea", tmp_path / "a", num_cases=3, seed=2, workers=1, **TINY["cochlea"])
    b = generate("cochlea", tmp_path / "b", num_cases=3, seed=2, workers=2, **TINY["cochlea"])
    for rel in ("manifest.json", "images/cochlea_001.nii.gz", "masks/cochlea_002.nii.gz"):
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes(), rel


def test_a_case_does_not_depend_on_the_data_set_size(tmp_path: Path):
    small = generate("lung", tmp_path / "s", num_cases=3, **TINY["lung"])
    large = generate("lung", tmp_path / "l", num_cases={"train": 5}, **TINY["lung"])
    for i in range(3):
        rel = f"images/lung_{i:03d}.nii.gz"
        assert (small.parent / rel).read_bytes() == (large.parent / rel).read_bytes()


def test_boxes_option_stores_boxes_derived_from_the_mask(tmp_path: Path):
    path = generate("lung", tmp_path, num_cases=3, boxes=True, **TINY["lung"])
    for case in load_manifest(path).cases:
        assert case.strong and case.boxes
        mask = read_volume(case.mask, dtype=np.uint8).array
        assert case.boxes == boxes_from_mask(mask)
        # the boxes cover every mask pixel, and only slices with mask pixels have boxes
        covered = np.zeros_like(mask)
        for b in case.boxes:
            x1, y1, x2, y2 = (int(v) for v in b.box)
            covered[b.z, y1:y2, x1:x2] = 1
        assert np.all(covered[mask > 0] == 1)
        assert {b.z for b in case.boxes} == set(np.nonzero(mask.any(axis=(1, 2)))[0].tolist())


def test_resolve_split_paper_defaults_and_proportions():
    assert resolve_split("lung") == {"train": 160, "val": 80, "test": 80}
    assert resolve_split("cochlea") == {"train": 66, "val": 40, "test": 40}
    assert resolve_split("lung", 320) == {"train": 160, "val": 80, "test": 80}
    assert resolve_split("cochlea", 146) == {"train": 66, "val": 40, "test": 40}
    assert resolve_split("lung", 40) == {"train": 20, "val": 10, "test": 10}
    assert resolve_split("lung", 3) == {"train": 1, "val": 1, "test": 1}
    assert resolve_split("cochlea", {"train": 4, "test": 2}) == {"train": 4, "val": 0, "test": 2}


@pytest.mark.parametrize(
    ("num_cases", "message"),
    [
        (2, "num_cases must be an integer >= 3"),
        (True, "num_cases must be an integer >= 3"),
        (5.0, "num_cases must be an integer >= 3"),
        ({"training": 3}, r"unknown split\(s\) \['training'\]"),
        ({"train": -1, "val": 2}, r"num_cases\['train'\] must be a non-negative integer"),
        ({"train": 0}, "need at least one case"),
    ],
)
def test_resolve_split_errors(num_cases, message: str):
    with pytest.raises(ValueError, match=message):
        resolve_split("lung", num_cases)


def test_parse_split():
    assert parse_split("160/80/80") == {"train": 160, "val": 80, "test": 80}
    for bad in ("160/80", "a/b/c", "1/-1/1", ""):
        with pytest.raises(ValueError, match="split must look like TRAIN/VAL/TEST"):
            parse_split(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(task="liver"), r"task must be one of \['cochlea', 'lung'\]"),
        (dict(size=96), r"size must be an integer in 128..1024"),
        (dict(slices=4, version=4), r"slices must be an integer in 8..512 for lung"),
        (dict(slices=8), r"slices must be an integer in 16..512 for lung"),
        (dict(version=3), r"version must be one of \(4, 5\)"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(workers=0), "workers must be a positive integer"),
    ],
)
def test_generate_argument_errors(tmp_path: Path, kwargs: dict, message: str):
    args = dict(task="lung", num_cases=3) | kwargs
    task = args.pop("task")
    with pytest.raises(ValueError, match=message):
        generate(task, tmp_path, **args)
    assert not (tmp_path / "manifest.json").exists()


def test_defaults_are_paper_like():
    assert TASKS["lung"].default_size == 192 and TASKS["lung"].default_slices == 32
    case = generate_case("lung", 0, version=4)
    assert case.shape == (32, 192, 192)
    assert case.spacing[0] == 1.25 and 0.55 <= case.spacing[1] == case.spacing[2] <= 0.7
    case = generate_case("cochlea", 0)
    assert case.shape == (24, 192, 192) and case.spacing == (1.0, 0.40625, 0.40625)


def test_cli_writes_a_data_set(tmp_path: Path, capsys):
    out = tmp_path / "d"
    rc = main(
        [
            "synth",
            "--task",
            "cochlea",
            "-o",
            str(out),
            "--split",
            "1/1/1",
            "--size",
            "128",
            "--slices",
            "12",
            "--seed",
            "3",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(out / "manifest.json")
    m = load_manifest(out / "manifest.json")
    assert len(m.cases) == 3
    np.testing.assert_array_equal(
        read_volume(m.cases[2].image, dtype=np.int16).array,
        generate_case("cochlea", 2, seed=3, size=128, slices=12).image,
    )


def test_cli_reports_bad_arguments(tmp_path: Path, capsys):
    assert main(["synth", "--task", "lung", "-o", str(tmp_path), "--split", "1/2"]) == 2
    assert "msdn synth: error: split must look like TRAIN/VAL/TEST" in capsys.readouterr().err
    assert main(["synth", "--task", "lung", "-o", str(tmp_path), "--cases", "3", "--size", "64"]) == 2
    assert "size must be an integer in 128..1024" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--task", "lung", "-o", str(tmp_path), "--cases", "3", "--split", "1/1/1"])
