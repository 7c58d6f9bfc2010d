"""Mixed batches: weak rows never give segmentation loss; seg-only models skip box-only batches."""

from __future__ import annotations

import torch

from model_export.nets import build_model
from model_export.training.step import batch_loss

SEG_ONLY_PREFIXES = ("seg_net.", "seg_unit.", "links.")


def _batch(strong, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(strong)
    label = torch.zeros(b, size, size, dtype=torch.long)
    label[:, 8:20, 10:22] = 1
    return {
        "image": torch.randn(b, 1, size, size, generator=g),
        "label": label,
        "strong": torch.tensor(strong),
        "targets": [{"boxes": torch.tensor([[10.0, 8.0, 22.0, 20.0]]), "labels": torch.tensor([1])} for _ in range(b)],
    }


def _model(name):
    torch.manual_seed(0)
    return build_model(name, preset="small", base_channels=4, head_channels=8, dropout=0.0)


def test_weak_rows_get_no_segmentation_gradient():
    model = _model("msdn").eval()  # eval: BatchNorm uses running statistics, rows are independent
    batch = _batch([True, False, True, False])
    batch["image"].requires_grad_(True)
    losses = batch_loss(model, model, batch, torch.device("cpu"))
    assert set(losses) == {"seg_dice", "det_cls", "det_box", "total"}
    (grad,) = torch.autograd.grad(losses["seg_dice"], batch["image"], retain_graph=True)
    assert grad[[0, 2]].abs().sum() > 0
    assert torch.all(grad[[1, 3]] == 0)
    # the detection loss does learn from the weak rows
    (grad_det,) = torch.autograd.grad(losses["det_cls"] + losses["det_box"], batch["image"])
    assert grad_det[[1, 3]].abs().sum() > 0


def test_weak_labels_are_ignored_and_seg_parameters_see_only_strong_rows():
    model = _model("msdn").eval()
    mixed = _batch([True, False])
    mixed["label"][1] = 1  # garbage label on the weak row must change nothing
    strong_only = {k: v[:1] for k, v in mixed.items()}

    def seg_grads(batch, part):
        model.zero_grad()
        batch_loss(model, model, batch, torch.device("cpu"))[part].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith(SEG_ONLY_PREFIXES)}

    a = seg_grads(mixed, "total")
    b = seg_grads(strong_only, "seg_dice")
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def test_box_only_batch_on_a_detecting_model_gives_detection_loss_only():
    model = _model("ms_net").train()
    losses = batch_loss(model, model, _batch([False, False]), torch.device("cpu"))
    assert set(losses) == {"det_cls", "det_box", "total"}
    losses["total"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("seg_unit."))


def test_seg_only_model_skips_box_only_batch_and_ignores_weak_rows():
    for name in ("unet", "unet_sse", "msdn_minus"):
        model = _model(name).train()
        assert batch_loss(model, model, _batch([False, False]), torch.device("cpu")) is None
        # under DDP it must still take part in the backward pass, with a zero loss
        zero = batch_loss(model, model, _batch([False, False]), torch.device("cpu"), distributed=True)
        assert float(zero["total"].detach()) == 0.0
        zero["total"].backward()
        # weak rows never reach a segmentation-only model, even in training mode (BatchNorm statistics)
        batch = _batch([True, False, False])
        batch["image"].requires_grad_(True)
        losses = batch_loss(model, model, batch, torch.device("cpu"))
        assert set(losses) == {"seg_dice", "total"}
        (grad,) = torch.autograd.grad(losses["total"], batch["image"])
        assert grad[0].abs().sum() > 0 and torch.all(grad[1:] == 0)


def test_box_constraints_give_a_segmentation_only_model_a_loss_on_weak_rows():
    from model_export.box_constraints import BoxConstraintLoss
    from model_export.training.step import LossOptions

    model = _model("unet").eval()
    batch = _batch([True, False, True, False])
    batch["image"].requires_grad_(True)
    box_loss = BoxConstraintLoss(size_bounds=(0.5, 0.9))
    opts = LossOptions(box_constraints=box_loss)
    losses = batch_loss(model, model, batch, torch.device("cpu"), options=opts, epoch=3)
    assert set(losses) == {"seg_dice", "box_empty", "box_tight", "box_size", "box", "total"}
    torch.testing.assert_close(losses["total"], losses["seg_dice"] + losses["box"])
    # independent path: the same parts from the model's own output on each kind of row
    with torch.no_grad():
        probs = model(batch["image"])["segmentation"]
    plain = batch_loss(model, model, {k: v[[0, 2]] if k != "targets" else v[:2] for k, v in batch.items()}, "cpu")
    torch.testing.assert_close(losses["seg_dice"], plain["seg_dice"])
    want_targets = [batch["targets"][1], batch["targets"][3]]
    want = box_loss(probs[[1, 3]], want_targets, epoch=3)
    torch.testing.assert_close(losses["box"], want["box"])
    # the Dice sees only strong rows, the constraints only weak rows
    (g_seg,) = torch.autograd.grad(losses["seg_dice"], batch["image"], retain_graph=True)
    (g_box,) = torch.autograd.grad(losses["box"], batch["image"])
    assert g_seg[[0, 2]].abs().sum() > 0 and torch.all(g_seg[[1, 3]] == 0)
    assert g_box[[1, 3]].abs().sum() > 0 and torch.all(g_box[[0, 2]] == 0)
    # with the cross-entropy on, the strong rows get Dice + CE as without the constraints
    ce = batch_loss(model, model, batch, "cpu", options=LossOptions(box_constraints=box_loss, seg_ce_weight=0.5))
    torch.testing.assert_close(ce["total"], ce["seg_dice"] + 0.5 * ce["seg_ce"] + ce["box"])
    torch.testing.assert_close(ce["box"], box_loss(probs[[1, 3]], want_targets)["box"])  # epoch 0
    # a batch of weak rows only still has a loss (without the option a U-Net skips it)
    weak = _batch([False, False])
    assert batch_loss(model, model, weak, torch.device("cpu")) is None
    assert set(batch_loss(model, model, weak, torch.device("cpu"), options=opts)) >= {"box", "total"}
