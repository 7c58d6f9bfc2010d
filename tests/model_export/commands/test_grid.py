"""``msdn grid``: the model grid written into an exported model's card (embedded and sidecar)."""

from __future__ import annotations

from model_export.cli import main
from msdn_core.digest import file_sha256
from msdn_core.onnx_model import read_card
from tests.support.onnx_models import threshold_model


def test_msdn_grid_writes_spacing_and_orientation(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    threshold_model(model, classes=["nodule"], sidecar=True)
    before = model.read_bytes()
    assert main(["grid", str(model), "--spacing", "1.25,1.3", "--dry-run"]) == 0
    assert model.read_bytes() == before
    assert main(["grid", str(model), "--spacing", "1.25,1.3"]) == 0
    assert f"written {model}" in capsys.readouterr().out
    card, sha = read_card(model)
    assert (card.input.spacing_mm, card.input.orientation) == ([1.25, 1.3], "LPS") and sha == file_sha256(model)
    assert main(["grid", str(model), "--spacing", "auto"]) == 2  # auto needs the training manifest
    assert "needs --manifest" in capsys.readouterr().err
