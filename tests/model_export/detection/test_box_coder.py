import math

import pytest
import torch

from model_export.detection.box_coder import BoxCoder


def test_encode_hand_values():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]])
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 20.0, 10.0]])
    d = coder.encode(boxes, anchors)
    # centre shift / anchor size, log size ratios
    assert torch.allclose(d[0], torch.tensor([0.5, 0.5, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(d[1], torch.tensor([0.5, -0.25, math.log(2.0), math.log(0.5)]), atol=1e-6)


def test_weights_scale_the_deltas():
    d = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(
        torch.tensor([[5.0, 5.0, 15.0, 15.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    )
    assert torch.allclose(d, torch.tensor([[5.0, 5.0, 0.0, 0.0]]), atol=1e-6)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 4 + torch.rand(200, 2, generator=g) * 40], dim=1)
    xy2 = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy2, xy2 + 1 + torch.rand(200, 2, generator=g) * 60], dim=1)
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    assert torch.allclose(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-3)


def test_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        BoxCoder(weights=(1.0, 1.0, 0.0, 1.0))
