import json
import subprocess
import sys

import pytest

from msdn_core.card import ClassInfo, InputSpec, ModelCard


def _card():
    return ModelCard(name="m", method="msdn", classes=[ClassInfo(1, "nodule")], input=InputSpec(mean=-500.0, std=300.0))


def test_json_round_trip():
    card = _card()
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.num_classes == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("classes"), "missing"),
        (lambda d: d.update(classes=[{"value": 2, "name": "x"}]), "class values"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["input"].update(std=0), "std"),
        (lambda d: d["input"].update(clip=[5, 1]), "clip"),
        (lambda d: d["input"].update(bogus=1), "malformed"),
    ],
)
def test_bad_cards(mutate, message):
    data = json.loads(_card().to_json())
    mutate(data)
    with pytest.raises(ValueError, match=message):
        ModelCard.from_dict(data)
    with pytest.raises(ValueError, match="JSON"):
        ModelCard.from_json("{not json")


def test_card_module_does_not_import_torch():
    code = "import sys, msdn_core.card; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
