import pytest
import torch

from model_export.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from model_export.nets import MODEL_NAMES, build_model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip_is_bit_exact(tmp_path, name):
    torch.manual_seed(1)
    model = build_model(name, preset="small", base_channels=4, head_channels=8, num_classes=2)
    # make BatchNorm buffers non-trivial
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    path = save_checkpoint(
        tmp_path / "ck.pt",
        model,
        classes=["nodule", "vessel"],
        normalization={"mean": -600.0, "std": 350.0, "clip": [-1000, 400]},
        patch_size=(128, 128),
        training={"dataset": "synthetic-lung", "epochs": 3},
        validation_dice=0.71,
    )
    loaded, card, payload = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) and sd[k].dtype == sd2[k].dtype for k in sd)
    model.eval()
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.equal(model.segment(x), loaded.segment(x))
    assert not loaded.training
    assert card.method == name and [c.name for c in card.classes] == ["nodule", "vessel"]
    assert [c.value for c in card.classes] == [1, 2]
    assert card.input.mean == -600.0 and card.input.std == 350.0 and card.input.clip == [-1000.0, 400.0]
    assert card.input.size_multiple == 16 and card.input.patch_size == [128, 128]
    assert card.validation_dice == 0.71 and card.training["dataset"] == "synthetic-lung"
    assert card.architecture["base_channels"] == 4 and card.version
    assert payload["format"] == "msdn-checkpoint"


def test_sha256_changes_with_content(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"abc")
    assert file_sha256(a) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not an msdn checkpoint"):
        load_checkpoint(other)
    good = save_checkpoint(tmp_path / "good.pt", build_model("unet", preset="small", base_channels=4))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(truncated)


def test_wrong_number_of_class_names(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        save_checkpoint(tmp_path / "x.pt", build_model("unet", preset="small", base_channels=4), classes=["a", "b"])
