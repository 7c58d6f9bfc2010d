import pytest
import torch

from model_export.nets import MODEL_NAMES, build_model
from model_export.nets.blocks import BinarySSE, ConvStage, UnarySSE

TINY = dict(preset="small", base_channels=4, head_channels=8)
DETECTING = {"ms_net", "msdn"}


def _anchors(h, w, strides):
    return [(h // s) * (w // s) * 9 for s in strides]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
def test_shape_table_small(name, size):
    h, w = size
    model = build_model(name, num_classes=2, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, h, w))
    assert out["segmentation"].shape == (3, 3, h, w)
    assert torch.allclose(out["segmentation"].sum(1), torch.ones(3, h, w), atol=1e-5)
    if name in DETECTING:
        assert model.has_detection
        assert out["det_sizes"] == [(h // s, w // s) for s in (8, 4, 2)]
        assert [c.shape for c in out["cls_logits"]] == [(3, n, 2) for n in _anchors(h, w, (8, 4, 2))]
        assert [b.shape for b in out["box_deltas"]] == [(3, n, 4) for n in _anchors(h, w, (8, 4, 2))]
    else:
        assert not model.has_detection and "cls_logits" not in out
    assert model.segmentation_path()(torch.randn(1, 1, h, w)).shape == (1, 3, h, w)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shape_table_paper_preset(name):
    model = build_model(name, preset="paper").eval()
    assert model.config.base_channels == 32
    with torch.no_grad():
        out = model(torch.randn(1, 1, 128, 128))
    assert out["segmentation"].shape == (1, 2, 128, 128)
    if name in DETECTING:
        assert [c.shape[1] for c in out["cls_logits"]] == _anchors(128, 128, (8, 4, 2, 1))
        assert model.det_unit.cls_tower[0].out_channels == 256
        assert sum(isinstance(m, torch.nn.Conv2d) for m in model.det_unit.cls_tower) == 4


def test_dilations_read_back_from_built_modules():
    model = build_model("msdn", **TINY)
    for net in (model.seg_net.encoder, model.det_encoder):
        assert [s.dilation for s in net.stages] == [1, 2, 2, 2, 4]
    for dec in (model.seg_net.decoder, model.det_decoder):
        assert [s.dilation for s in dec.stages] == [2, 2, 2, 1]
    convs = [m for s in model.seg_net.encoder.stages for m in s if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 2, 2, 2, 2, 2, 4, 4]
    stages = [m for m in build_model("unet", **TINY).modules() if isinstance(m, ConvStage)]
    assert len(stages) == 9


def test_msdn_has_five_binary_sse_links_after_encoder_stages_and_bottleneck():
    model = build_model("msdn", **TINY).eval()
    links = [m for m in model.modules() if isinstance(m, BinarySSE)]
    assert len(links) == 5 and not any(isinstance(m, UnarySSE) for m in model.modules())
    assert [link.squeeze.in_channels for link in model.links] == [4, 8, 16, 32, 64]
    calls = []
    det_out, seg_out = {}, {}

    def on_det(i, output):
        det_out[i] = output

    def on_seg(i, output):
        seg_out[i] = output
        calls.append(f"seg{i}")

    def on_link(i, args):
        calls.append((f"link{i}", args[0] is seg_out[i], args[1] is det_out[i]))

    for i in range(5):
        model.det_encoder.stages[i].register_forward_hook(lambda m, a, o, i=i: on_det(i, o))
        model.seg_net.encoder.stages[i].register_forward_hook(lambda m, a, o, i=i: on_seg(i, o))
        model.links[i].register_forward_hook(lambda m, a, o, i=i: on_link(i, a))
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    # Each link runs right after its segmentation stage, on (segmentation feature, detection feature).
    assert calls == [x for i in range(5) for x in (f"seg{i}", (f"link{i}", True, True))]
    assert not any(isinstance(m, BinarySSE) for m in model.seg_net.decoder.modules())


def test_unet_sse_has_unary_sse_after_all_nine_stages():
    model = build_model("unet_sse", **TINY)
    assert sum(isinstance(m, UnarySSE) for m in model.modules()) == 9
    assert sum(isinstance(m, UnarySSE) for m in build_model("unet", **TINY).modules()) == 0


def test_msdn_minus_has_links_but_no_detection_unit():
    model = build_model("msdn_minus", **TINY)
    assert sum(isinstance(m, BinarySSE) for m in model.modules()) == 5
    assert model.det_unit is None and model.det_decoder is None and not model.has_detection


def _targets(n):
    return [{"boxes": torch.tensor([[4.0, 6.0, 20.0, 18.0]]), "labels": torch.tensor([1])} for _ in range(n)]


SEG_ONLY_PREFIXES = ("seg_net.", "links.", "seg_unit.")


def test_box_only_batch_gives_no_gradient_to_segmentation_parameters():
    torch.manual_seed(0)
    model = build_model("msdn", **TINY).train()
    out = model(torch.randn(2, 1, 32, 32), seg_mask=torch.tensor([False, False]))
    assert out["segmentation"] is None
    losses = model.loss(out, targets=_targets(2))
    assert set(losses) == {"det_cls", "det_box", "total"}
    losses["total"].backward()
    for name, p in model.named_parameters():
        if name.startswith(SEG_ONLY_PREFIXES):
            assert p.grad is None or not p.grad.any(), name
    for prefix in ("det_encoder.", "det_decoder.", "det_unit."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), prefix


def test_mixed_batch_weak_rows_do_not_change_segmentation_gradients():
    torch.manual_seed(0)
    model = build_model("msdn", **TINY).eval()  # eval: BatchNorm statistics do not couple rows
    x = torch.randn(2, 1, 32, 32)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 8:20, 8:20] = 1

    def seg_grads(batch, mask):
        model.zero_grad()
        out = model(batch, seg_mask=mask)
        model.seg_unit.loss(out["segmentation"], labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("seg_unit.")}

    mixed = seg_grads(x, torch.tensor([True, False]))
    alone = seg_grads(x[:1], None)
    for n in mixed:
        assert torch.allclose(mixed[n], alone[n], atol=1e-6), n
        assert mixed[n].abs().sum() > 0


def test_ms_net_box_only_batch_trains_backbone_not_segmentation_unit():
    model = build_model("ms_net", **TINY).train()
    out = model(torch.randn(2, 1, 32, 32), seg_mask=torch.tensor([False, False]))
    model.loss(out, targets=_targets(2))["total"].backward()
    assert all(p.grad is None for p in model.seg_unit.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_segmentation_only_model_needs_labels():
    model = build_model("unet", **TINY)
    out = model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="labels"):
        model.loss(out)
    parts = model.loss(out, labels=torch.zeros(1, 32, 32, dtype=torch.long))
    assert set(parts) == {"seg_dice", "total"}


def test_segmentation_path_shares_parameters_and_matches_forward():
    model = build_model("msdn", **TINY).eval()
    path = model.segmentation_path()
    assert {id(p) for p in path.parameters()} == {id(p) for p in model.parameters()}
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        assert torch.equal(path(x), model(x)["segmentation"])
