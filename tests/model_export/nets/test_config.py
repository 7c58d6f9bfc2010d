import pytest

from model_export.nets import build_model, make_config
from model_export.nets.config import PAPER_DILATIONS, NetConfig


def test_presets():
    paper = make_config("msdn", preset="paper")
    assert paper.base_channels == 32 and paper.head_channels == 256 and paper.head_convs == 4
    assert paper.detection_strides == (8, 4, 2, 1) and paper.num_anchors == 9
    assert paper.dilations == PAPER_DILATIONS == (1, 2, 2, 2, 4, 2, 2, 2, 1)
    small = make_config("msdn", preset="small")
    assert small.base_channels == 16 and small.head_channels == 64
    assert make_config("msdn", preset="small", base_channels=8).base_channels == 8


def test_round_trip_through_dict():
    cfg = make_config("ms_net", preset="small", num_classes=3, dropout=0.3)
    assert NetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(name="vnet"), "name"),
        (dict(name="msdn", preset="huge"), "preset"),
        (dict(name="msdn", num_classes=0), "num_classes"),
        (dict(name="msdn", in_channels=0), "in_channels"),
        (dict(name="msdn", base_channels=2.5), "base_channels"),
        (dict(name="msdn", dropout=-0.1), "dropout"),
        (dict(name="msdn", dilations=(1, 2, 3)), "dilations"),
        (dict(name="msdn", detection_strides=(16,)), "detection_strides"),
        (dict(name="msdn", detection_strides=()), "detection_strides"),
        (dict(name="msdn", head_channels=0), "head_channels"),
        (dict(name="msdn", anchor_scales=()), "anchor_scales"),
        (dict(name="msdn", anchor_ratios=(1.0, -2.0)), "anchor_ratios"),
        (dict(name="msdn", anchor_size_factor=0), "anchor_size_factor"),
        (dict(name="msdn", widht=3), "widht"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_model(**kwargs)
