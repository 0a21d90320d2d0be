"""`vislab arith ...` end to end through the main CLI (tables, JSON, worked examples, errors)."""

from __future__ import annotations

import json

import pytest

from vislab.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["arith", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_spec_table(capsys):
    code, out, _ = run(capsys, "conv(16,k=5,s=1,p=1) relu maxpool(2) conv(16,k=5) relu maxpool(2) flatten dense(10)",
                       "--input", "3x128x128")
    assert code == 0
    assert "1  conv(16,k=5,s=1,p=1)  16x126x126    1,216  19,051,200       5       1    1" in out
    assert "8  dense(10)             10          134,570     134,560  global       -    -" in out
    assert "params      142,202 (142.20 K); without bias 142,160" in out


def test_spec_json(capsys):
    code, out, _ = run(capsys, "conv(8,k=3,s=2) gap", "--input", "3x9x9", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["rows"][0]["output_shape"] == [8, 4, 4] and data["rows"][0]["params"] == 8 * 27 + 8
    assert data["rows"][1]["rf"] == "global"
    assert data["totals"]["rf"] == [3, 3]


def test_model_json_resnet18(capsys):
    code, out, _ = run(capsys, "--model", "resnet18", "--input", "3x224x224", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["totals"]["params"] == 11_689_512
    assert data["totals"]["output_shape"] == [1000]
    assert (data["totals"]["rf"], data["totals"]["stride"], data["totals"]["padding"]) == ([435, 435], [32, 32],
                                                                                           [217, 217])


def test_model_unet_answers_the_course_questions(capsys):
    code, out, _ = run(capsys, "--model", "unet", "--input", "3x256x256", "--arg", "batch_norm=False", "--json")
    rows = json.loads(out)["rows"]
    assert code == 0
    bottleneck = [r for r in rows if r["name"].startswith("bottleneck.")]
    assert bottleneck[0]["input_shape"][1:] == [16, 16]  # 256 / 2⁴
    encoder_convs = [r["params"] for r in rows if r["name"].startswith("encoders.") and r["type"] == "Conv2d"]
    assert encoder_convs == [1_792, 36_928, 73_856, 147_584, 295_168, 590_080, 1_180_160, 2_359_808]


def test_model_densenet_channel_growth(capsys):
    code, out, _ = run(capsys, "--model", "densenet", "--input", "3x224x224", "--json")
    rows = json.loads(out)["rows"]
    first_convs = [r["input_shape"][0] for r in rows
                   if r["name"].startswith("features.denseblock2.") and r["name"].endswith(".conv1")]
    m, k = 128, 32  # DenseNet-121: the first transition halves 64 + 6·32 = 256 to 128
    assert first_convs == [m + (l - 1) * k for l in range(1, 13)]


def test_conv_steps_default_is_the_gap_example(capsys):
    code, out, _ = run(capsys, "conv-steps")
    assert code == 0
    assert "O[0,0] = 2·0 + 3·3 + 3·1 + 1·(-2) = 10" in out
    assert "GAP y = (10 + 3 + 9 + 18) / 4 = 10" in out
    assert "∂L/∂F[0,0] = 0.25·2 + 0.25·3 + 0.25·3 + 0.25·1 = 2.25" in out


def test_conv_steps_custom_matrices(capsys):
    code, out, _ = run(capsys, "conv-steps", "--x", "1,2;3,4", "--f", "1,0;0,-1", "--grad", "2")
    assert code == 0
    assert "O[0,0] = 1·1 + 2·0 + 3·0 + 4·(-1) = -3" in out
    assert "∂L/∂X[1,1] = 2·(-1) = -2" in out


def test_attention_and_padding(capsys):
    code, out, _ = run(capsys, "attention", "--dim", "96", "--heads", "3", "--map", "56x56", "--window", "7")
    assert code == 0
    assert "total          37,248" in out
    assert "W-MSA  4hwC² + 2M²hwC  = 115,605,504 + 29,503,488 = 145,108,992" in out
    code, out, _ = run(capsys, "padding", "--size", "8", "--kernel", "3", "--stride", "2")
    assert code == 0
    assert "same:  output ceil(n/s) = 4, padding 0 left/top + 1 right/bottom" in out


def test_probe_command(capsys):
    code, out, _ = run(capsys, "probe", "--model", "small_cnn", "--input", "3x32x32", "--layer", "features",
                       "--unit", "0,0", "--unit", "2,2")
    assert code == 0
    assert out.count("-> agree") == 2 and "DISAGREE" not in out


@pytest.mark.parametrize("argv, match", [
    (["conv(16) convv(3)", "--input", "3x32x32"], "vislab: error: layer 2 'convv(3)': unknown layer type 'convv'"),
    (["conv(16,k=5) conv(16,k=9)", "--input", "3x12x12"],
     "vislab: error: layer 2 'conv(16,k=9)' received 16x8x8 and would shrink the map to 0x0"),
    (["conv(-16,k=5)", "--input", "3x12x12"], "vislab: error: layer 1 'conv(-16,k=5)': out must be positive"),
    (["conv(16)"], "vislab: error: a layer spec needs --input CxHxW"),
    (["--model", "no_such_net"], "vislab: error: unknown model 'no_such_net'"),
    (["--model", "resnet18", "--arg", "oops"], "vislab: error: --arg expects KEY=VALUE, got 'oops'"),
    (["conv-steps", "--x", "1,2"], "vislab: error: give both --x and --f"),
    (["--model", "vgg16", "--input", "3x16x16"], "vislab: error: VGG cannot run on a 3x16x16 input: "),
    (["attention", "--dim", "96", "--heads", "5"], "vislab: error: d_model (96) must be divisible by heads (5)"),
])
def test_errors_are_one_line_with_exit_code_2(capsys, argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(match) and err.count("\n") == 1
