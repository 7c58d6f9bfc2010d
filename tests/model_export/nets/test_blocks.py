import pytest
import torch

from model_export.nets.blocks import BinarySSE, ConvStage, UnarySSE


def test_conv_stage_keeps_size_and_uses_dilation():
    stage = ConvStage(3, 8, dilation=4, dropout=0.2).eval()
    convs = [m for m in stage if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
    assert all(c.dilation == (4, 4) and c.padding == (4, 4) and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in stage) == 2
    assert sum(isinstance(m, torch.nn.ReLU) for m in stage) == 2
    assert isinstance(stage[-1], torch.nn.Dropout2d) and stage[-1].p == 0.2
    assert stage(torch.randn(2, 3, 20, 36)).shape == (2, 8, 20, 36)


def test_unary_sse_equals_eq1():
    sse = UnarySSE(2)
    with torch.no_grad():
        sse.squeeze.weight.copy_(torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))
    u = torch.tensor([[[[1.0, 0.0]], [[0.5, 3.0]]]])  # (1, 2, 1, 2)
    # w*U per pixel: 1*1 - 2*0.5 = 0 -> sigmoid 0.5 ; 1*0 - 2*3 = -6 -> sigmoid(-6)
    a = torch.tensor([0.5, 1 / (1 + torch.exp(torch.tensor(6.0)).item())])
    expected = u * a.view(1, 1, 1, 2)
    assert torch.allclose(sse(u), expected, atol=1e-7)


def test_binary_sse_equals_eq2_on_hand_built_tensor():
    sse = BinarySSE(3)
    with torch.no_grad():
        sse.squeeze.weight.copy_(torch.tensor([0.5, 1.0, -1.0]).view(1, 3, 1, 1))
    u1 = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # recalibrated, 2 channels
    u2 = torch.zeros(1, 3, 2, 2)  # squeezed, 3 channels
    u2[0, 0] = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # 0.5 * 2 = 1
    u2[0, 1] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # 1 * 1 = 1
    u2[0, 2] = torch.tensor([[0.0, 0.0], [3.0, 0.0]])  # -1 * 3 = -3
    s = torch.sigmoid(torch.tensor([[1.0, 1.0], [-3.0, 0.0]]))
    expected = torch.stack([u1[0, 0] * s, u1[0, 1] * s]).unsqueeze(0)
    out = sse(u1, u2)
    assert torch.allclose(out, expected, atol=1e-7)
    assert out[0, 1, 1, 1].item() == pytest.approx(7 * 0.5)
    assert sse.squeeze.bias is None  # eq. 2 has no bias term


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(in_channels=0, out_channels=4), "in_channels"),
        (dict(in_channels=2, out_channels=-1), "out_channels"),
        (dict(in_channels=2, out_channels=4, dilation=0), "dilation"),
        (dict(in_channels=2, out_channels=4, dropout=1.5), "dropout"),
    ],
)
def test_conv_stage_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ConvStage(**kwargs)


def test_sse_reject_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        UnarySSE(0)
    with pytest.raises(ValueError, match="squeeze_channels"):
        BinarySSE(0)
