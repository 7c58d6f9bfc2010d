"""``msdn export`` end to end through the CLI entry point (real export, real ONNX Runtime)."""

from __future__ import annotations

import json

import onnx
import pytest

from model_export.checkpoint import file_sha256
from model_export.cli import main
from model_export.export.calibration import PatchSet, save_npz
from msdn_core.onnx_model import read_model_card


@pytest.fixture(scope="module")
def data(tmp_path_factory, request):
    """A trained tiny U-Net checkpoint and .npz calibration / validation files."""
    trained = request.getfixturevalue("trained")
    directory = tmp_path_factory.mktemp("cli-data")
    cal = save_npz(directory / "cal.npz", PatchSet(trained["calibration"].images, None))
    val = save_npz(directory / "val.npz", trained["validation"])
    squeezed = save_npz(directory / "squeezed.npz", PatchSet(trained["calibration"].images * 0.01, None))
    return {"checkpoint": trained["checkpoint"], "cal": cal, "val": val, "squeezed": squeezed}


def test_export_with_variants(data, tmp_path, capsys):
    out = tmp_path / "m" / "model.onnx"
    code = main(
        [
            "export",
            str(data["checkpoint"]),
            "-o",
            str(out),
            "--fp16",
            "--int8",
            "--calibration-npz",
            str(data["cal"]),
            "--validation-npz",
            str(data["val"]),
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == [
        "model.card.json",
        "model.export.json",
        "model.fp16.card.json",
        "model.fp16.onnx",
        "model.int8.card.json",
        "model.int8.onnx",
        "model.onnx",
    ]
    assert read_model_card(out).checkpoint_sha256 == file_sha256(data["checkpoint"])
    assert [read_model_card(out.with_name(f"model.{p}.onnx")).precision for p in ("fp16", "int8")] == ["fp16", "int8"]
    report = json.loads(out.with_suffix(".export.json").read_text())
    assert report["parity"]["passed"] is True
    assert [c["shape"] for c in report["parity"]["cases"]] == [[2, 1, 48, 48], [1, 1, 16, 80]]
    assert report["validation"]["scores"]["int8"]["dice_loss"] <= 0.5
    assert "| int8 |" in stdout and "argmax agreement 100.0000%" in stdout


def test_lossy_int8_exits_1_and_force_keeps_it(data, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    args = [
        "export",
        str(data["checkpoint"]),
        "-o",
        str(out),
        "--int8",
        "--calibration-npz",
        str(data["squeezed"]),
        "--validation-npz",
        str(data["val"]),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "int8 loses" in err and "--force" in err
    assert out.exists() and not out.with_name("model.int8.onnx").exists()
    assert "error" in json.loads(out.with_suffix(".export.json").read_text())
    assert main(args + ["--force"]) == 0
    assert out.with_name("model.int8.onnx").exists()


def test_export_size_options_and_opset(data, tmp_path):
    out = tmp_path / "model.onnx"
    assert (
        main(
            [
                "export",
                str(data["checkpoint"]),
                "-o",
                str(out),
                "--export-size",
                "32x32",
                "--check-size",
                "64x48",
                "--opset",
                "17",
            ]
        )
        == 0
    )
    report = json.loads(out.with_suffix(".export.json").read_text())
    assert [c["shape"] for c in report["parity"]["cases"]] == [[2, 1, 32, 32], [1, 1, 64, 48]]
    assert onnx.load(str(out)).opset_import[0].version == 17 and read_model_card(out).opset == 17


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 needs calibration patches"),
        (["--int8", "--calibration-npz", "MISSING"], "calibration file not found"),
        (["--calibration-npz", "x.npz"], "are for --int8"),
        (["--with-detection"], "no detection unit"),
        (["--opset", "9"], "opset must be in 17..21"),
        (["--check-size", "40x40"], "multiples of 16"),
    ],
)
def test_bad_input_exits_2_with_a_message(data, tmp_path, capsys, extra, message):
    out = tmp_path / "model.onnx"
    extra = [str(tmp_path / "missing.npz") if e == "MISSING" else e for e in extra]
    assert main(["export", str(data["checkpoint"]), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_checkpoint_and_output(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    assert main(["export", str(junk), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert main(["export", str(junk), "-o", str(tmp_path / "m.bin")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
