"""``msdn classes``: class meanings written into an exported model's card (embedded and sidecar)."""

from __future__ import annotations

import json
from pathlib import Path

from model_export.cli import main
from msdn_core.card import Coded
from msdn_core.digest import file_sha256
from msdn_core.onnx_model import read_card
from tests.support.onnx_models import threshold_model

ROOT = Path(__file__).resolve().parents[3]
CODES = ROOT / "models" / "default.class-codes.json"


def test_msdn_classes_writes_the_codes_into_card_and_sidecar(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    threshold_model(model, classes=["nodule"], sidecar=True)
    before = model.read_bytes()
    assert main(["classes", str(model), "--codes", str(CODES), "--dry-run"]) == 0
    assert model.read_bytes() == before and '"27925004"' in capsys.readouterr().out
    assert main(["classes", str(model), "--codes", str(CODES)]) == 0
    card, sha = read_card(model)
    assert sha == file_sha256(model)  # the sidecar names the rewritten file
    nodule = card.classes[0]
    assert (nodule.category, nodule.type, nodule.anatomic_region, nodule.color_rgb) == (
        Coded("49755003", "SCT", "Morphologically abnormal structure"),
        Coded("27925004", "SCT", "Nodule"),
        Coded("39607008", "SCT", "Lung"),
        (255, 140, 0),
    )
    sidecar = json.loads(model.with_suffix(".card.json").read_text())
    assert sidecar["classes"][0]["type"] == {"code": "27925004", "scheme": "SCT", "meaning": "Nodule"}


def test_msdn_classes_refuses_codes_for_a_class_the_model_lacks(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    threshold_model(model, classes=["vessel"], sidecar=True)
    before = model.read_bytes()
    assert main(["classes", str(model), "--codes", str(CODES)]) == 2
    assert "name no class" in capsys.readouterr().err and model.read_bytes() == before
    assert main(["classes", str(model), "--codes", str(tmp_path / "missing.json")]) == 2
