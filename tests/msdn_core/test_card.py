import json
import subprocess
import sys

import pytest

from msdn_core.card import ClassInfo, Coded, InputSpec, ModelCard, with_class_meanings


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


def _detecting(**detection):
    data = json.loads(_card().to_json())
    data["outputs"] = {"segmentation": "probabilities", "detection": {"scores": "det_scores", "boxes": "det_boxes"}}
    if detection:
        data["detection"] = detection
    return data


def test_card_without_detection_block_loads_and_writes_the_same_json():
    data = _detecting()
    card = ModelCard.from_dict(data)
    assert card.detection is None and card.score_threshold is None
    assert "detection" not in card.to_dict()  # old cards keep their exact JSON (and older readers parse new ones)
    assert json.loads(card.to_json()) == data


def test_detection_block_round_trip():
    calibration = {
        "split": "val",
        "series": 6,
        "nodules": 9,
        "fp_per_scan_target": 1.0,
        "fp_per_scan": 0.5,
        "sensitivity": 0.778,
        "mean_series_dice": 0.61,
        "floor": 0.01,
        "precision": "fp32",
        "manifest": "data/manifest.json",
    }
    card = ModelCard.from_dict(_detecting(score_threshold=0.125, calibration=calibration))
    assert card.score_threshold == 0.125 and card.detection.calibration.sensitivity == 0.778
    assert card.to_dict()["detection"] == {"score_threshold": 0.125, "calibration": calibration}
    assert ModelCard.from_json(card.to_json()) == card
    # calibrated with the two-threshold proposals: the extension threshold of the runs is recorded
    two = dict(calibration, extend_threshold=0.01)
    card = ModelCard.from_dict(_detecting(score_threshold=0.125, calibration=two))
    assert card.detection.calibration.extend_threshold == 0.01
    assert card.to_dict()["detection"] == {"score_threshold": 0.125, "calibration": two}
    bare = ModelCard.from_dict(_detecting(score_threshold=1))
    assert bare.score_threshold == 1.0 and bare.detection.calibration is None
    assert bare.confirmation == "none" and "confirmation" not in bare.to_dict()["detection"]


def test_confirmation_round_trip():
    card = ModelCard.from_dict(_detecting(score_threshold=0.2, confirmation="segmentation"))
    assert card.confirmation == "segmentation"
    assert card.to_dict()["detection"] == {"score_threshold": 0.2, "calibration": None, "confirmation": "segmentation"}
    assert ModelCard.from_json(card.to_json()) == card
    assert ModelCard.from_dict(_detecting()).confirmation == "none"  # no detection block


@pytest.mark.parametrize(
    "detection, message",
    [
        ({"score_threshold": 1.5}, r"in \[0, 1\]"),
        ({"score_threshold": "0.2"}, r"in \[0, 1\]"),
        ({"score_threshold": True}, r"in \[0, 1\]"),
        ({"calibration": {}}, "score_threshold"),
        ({"score_threshold": 0.2, "extra": 1}, "unknown keys"),
        ({"score_threshold": 0.2, "calibration": {"split": "val"}}, "malformed"),
        ({"score_threshold": 0.2, "calibration": [1]}, "must be an object"),
        ({"score_threshold": 0.2, "confirmation": "both"}, "confirmation must be one of"),
    ],
)
def test_bad_detection_blocks(detection, message):
    with pytest.raises(ValueError, match=message):
        ModelCard.from_dict(_detecting(**detection))


def test_detection_block_needs_detection_outputs():
    data = json.loads(_card().to_json())
    data["detection"] = {"score_threshold": 0.2}
    with pytest.raises(ValueError, match="no detection outputs"):
        ModelCard.from_dict(data)


NODULE_CODES = {
    "category": {"code": "49755003", "scheme": "SCT", "meaning": "Morphologically abnormal structure"},
    "type": {"code": "27925004", "scheme": "SCT", "meaning": "Nodule"},
    "anatomic_region": {"code": "39607008", "scheme": "SCT", "meaning": "Lung"},
    "color_rgb": [255, 140, 0],
}


def test_class_meanings_round_trip_and_old_classes_keep_their_json():
    data = json.loads(_card().to_json())
    assert data["classes"] == [{"value": 1, "name": "nodule"}]  # uncoded: exactly what older readers wrote
    coded = with_class_meanings(_card().classes, {"nodule": NODULE_CODES})
    assert coded[0].type == Coded("27925004", "SCT", "Nodule") and coded[0].color_rgb == (255, 140, 0)
    card = ModelCard(name="m", method="msdn", classes=coded, input=InputSpec(mean=-500.0, std=300.0))
    again = ModelCard.from_json(card.to_json())
    assert again == card and json.loads(card.to_json())["classes"][0] == {"value": 1, "name": "nodule", **NODULE_CODES}
    assert with_class_meanings(_card().classes, {"1": NODULE_CODES}) == coded  # by value too


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        ({"vessel": NODULE_CODES}, "name no class"),
        ({"nodule": {"type": NODULE_CODES["type"]}}, "together"),
        ({"nodule": {**NODULE_CODES, "color_rgb": [255, 0]}}, "color_rgb"),
        ({"nodule": {**NODULE_CODES, "color_rgb": [256, 0, 0]}}, "color_rgb"),
        ({"nodule": {**NODULE_CODES, "type": {"code": "", "scheme": "SCT", "meaning": "x"}}}, "code must be"),
        ({"nodule": {**NODULE_CODES, "type": {"code": "1", "scheme": "SCT"}}}, "coded concept is"),
        ({"nodule": {**NODULE_CODES, "shape": "round"}}, "unknown class field"),
    ],
)
def test_bad_class_meanings_name_what_is_wrong(codes, message):
    with pytest.raises(ValueError, match=message):
        with_class_meanings(_card().classes, codes)
