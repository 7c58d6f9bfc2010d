from model_export.cli import main
from model_export.nets import build_model


def test_summary_prints_parameter_count_and_shapes(capsys):
    assert main(["summary", "--model", "msdn", "--preset", "small", "--size", "64", "96"]) == 0
    out = capsys.readouterr().out
    n = sum(p.numel() for p in build_model("msdn", preset="small").parameters())
    assert f"parameters {n:,}" in out
    assert "segmentation output (1, 2, 64, 96)" in out
    # 9 anchors per cell on the stride-8, 4, 2 levels
    assert f"-> {9 * (8 * 12 + 16 * 24 + 32 * 48)} anchors" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "summary" in capsys.readouterr().out
