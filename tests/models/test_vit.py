"""Our VisionTransformer against torchvision's: state dict, logits, per-head attention, fast path,
positional-embedding interpolation, and the ViT-B/16 file loader."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import interpolate_embeddings

from vislab.models.vit import (
    VisionTransformer,
    interpolate_pos_embedding,
    load_vit_b_16,
    load_vit_state_dict,
    vit_b_16,
)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (torchvision zero-initialises the head and class token); LayerNorm
    scales around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            is_norm_scale = ".ln" in name and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_scale else noise)


def _pair(cfg: dict, seed: int = 0) -> tuple[torch.nn.Module, VisionTransformer]:
    torch.manual_seed(seed)
    tv = torchvision.models.VisionTransformer(**cfg).eval()
    _randomise(tv, seed)
    ours = VisionTransformer(**cfg).eval()
    ours.load_state_dict(tv.state_dict())
    return tv, ours


CONFIGS = [
    {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 4, "hidden_dim": 32, "mlp_dim": 48,
     "num_classes": 5},
    {"image_size": 48, "patch_size": 6, "num_layers": 3, "num_heads": 3, "hidden_dim": 24, "mlp_dim": 40,
     "num_classes": 7},
    {"image_size": 40, "patch_size": 10, "num_layers": 1, "num_heads": 1, "hidden_dim": 16, "mlp_dim": 16,
     "num_classes": 3},
]


def _torchvision_attention(tv: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's own per-head attention weights: each block's nn.MultiheadAttention is called again
    on the input it got in the forward pass, with need_weights=True and average_attn_weights=False."""
    inputs: list[torch.Tensor] = []
    hooks = [layer.self_attention.register_forward_pre_hook(lambda m, args, kw: inputs.append(args[0]),
                                                            with_kwargs=True)
             for layer in tv.encoder.layers]
    try:
        with torch.no_grad():
            tv(x)
    finally:
        for h in hooks:
            h.remove()
    weights = []
    with torch.no_grad():
        for layer, inp in zip(tv.encoder.layers, inputs):
            _, w = layer.self_attention(inp, inp, inp, need_weights=True, average_attn_weights=False)
            weights.append(w)
    return weights


@pytest.mark.parametrize("cfg", CONFIGS)
def test_state_dict_keys_and_shapes_equal_torchvision(cfg):
    tv = torchvision.models.VisionTransformer(**cfg)
    ours = VisionTransformer(**cfg)
    a, b = tv.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_logits_and_attention_equal_torchvision(cfg):
    tv, ours = _pair(cfg, seed=3)
    x = torch.randn(3, 3, cfg["image_size"], cfg["image_size"])
    with torch.no_grad():
        ref = tv(x)
        logits, att = ours(x, need_weights=True)
        fast = ours(x)
    assert ref.abs().max() > 0.1  # a non-trivial output
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    t = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
    assert len(att) == cfg["num_layers"]
    assert all(a.shape == (3, cfg["num_heads"], t, t) for a in att)
    for ours_w, ref_w in zip(att, _torchvision_attention(tv, x)):
        torch.testing.assert_close(ours_w, ref_w, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours_w.sum(-1), torch.ones(3, cfg["num_heads"], t), rtol=0, atol=1e-5)
    # torchvision's default (head-averaged) weights are the mean of ours over the heads
    inp = torch.randn(2, t, cfg["hidden_dim"])
    blk_tv, blk = tv.encoder.layers[0].self_attention, ours.encoder.layers[0].self_attention
    with torch.no_grad():
        _, avg = blk_tv(inp, inp, inp, need_weights=True)
        _, per_head = blk(inp, need_weights=True)
    torch.testing.assert_close(per_head.mean(1), avg, rtol=0, atol=1e-6)


def test_training_mode_without_dropout_and_gradients_equal_torchvision():
    cfg = CONFIGS[1]
    tv, ours = _pair(cfg, seed=5)
    tv.train()
    ours.train()
    x = torch.randn(2, 3, 48, 48)
    tv(x).square().sum().backward()
    ours(x).square().sum().backward()
    gt = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, gt[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fast_path_equals_readable_path_with_and_without_grad():
    cfg = {**CONFIGS[0], "num_layers": 3}
    _, ours = _pair(cfg, seed=7)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    ours.set_fused_attention(False)
    slow = ours(x)
    (gs,) = torch.autograd.grad(slow.sum(), x)
    ours.set_fused_attention(True)
    fast = ours(x)
    (gf,) = torch.autograd.grad(fast.sum(), x)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    torch.testing.assert_close(gf, gs, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def vit_b_16_file(tmp_path_factory):
    """torchvision's vit_b_16 (random weights, a non-zero head) and its state dict saved with the MLP keys of
    torchvision's published checkpoint (mlp.linear_1 / mlp.linear_2, from before its rename to mlp.0 / mlp.3)."""
    torch.manual_seed(0)
    tv = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():
        tv.heads.head.weight.normal_(std=0.02)
        tv.class_token.normal_(std=0.02)
    legacy = {k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): v
              for k, v in tv.state_dict().items()}
    assert any(".mlp.linear_1." in k for k in legacy)
    path = tmp_path_factory.mktemp("vit_b_16") / "vit_b_16.pth"
    torch.save(legacy, path)
    return tv, path


def test_vit_b_16_loads_from_file_and_matches_torchvision(vit_b_16_file):
    tv, path = vit_b_16_file
    ours, info = load_vit_b_16(path)
    assert info["new_head"] is False and info["interpolated_pos_embedding"] is False
    assert list(ours.state_dict()) == list(tv.state_dict())
    assert all(not p.is_meta for p in ours.parameters())
    ours.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = tv(x)
        logits, att = ours(x, need_weights=True)
        fast = ours(x)
    assert len(att) == 12 and att[-1].shape == (1, 12, 197, 197)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    with torch.device("meta"):
        assert list(vit_b_16().state_dict()) == list(tv.state_dict())


def test_load_vit_b_16_for_fine_tuning_and_errors(vit_b_16_file, tmp_path):
    tv, path = vit_b_16_file
    model, info = load_vit_b_16(path, num_classes=10, image_size=64)
    assert info["new_head"] and info["interpolated_pos_embedding"] == [197, 17] and info["file_classes"] == 1000
    torch.testing.assert_close(model.encoder.layers[3].mlp[3].weight, tv.encoder.layers[3].mlp[3].weight)
    ref = interpolate_pos_embedding(tv.encoder.pos_embedding.detach(), 4)
    torch.testing.assert_close(model.encoder.pos_embedding.detach(), ref)
    assert model.heads.head.out_features == 10 and model.heads.head.weight.abs().sum() == 0
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(FileNotFoundError, match=r"ViT-B/16 weights file .*missing\.pth not found"):
        load_vit_b_16(tmp_path / "missing.pth")
    torch.save(torchvision.models.VisionTransformer(**CONFIGS[0]).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match=r"is not a ViT-B/16 state dict: conv_proj.weight \(32, 3, 8, 8\)"):
        load_vit_b_16(tmp_path / "small.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not a torchvision VisionTransformer state dict"):
        load_vit_b_16(tmp_path / "other.pth")


@pytest.mark.parametrize("old, new, mode", [(4, 6, "bicubic"), (7, 5, "bilinear"), (14, 24, "bicubic")])
def test_interpolate_pos_embedding_equals_torchvision(old, new, mode):
    g = torch.Generator().manual_seed(old * new)
    pos = torch.randn(1, old * old + 1, 12, generator=g)
    ref = interpolate_embeddings(new * 16, 16, OrderedDict({"encoder.pos_embedding": pos.clone()}), mode)
    ours = interpolate_pos_embedding(pos, new, mode=mode)
    torch.testing.assert_close(ours, ref["encoder.pos_embedding"], rtol=0, atol=0)
    assert interpolate_pos_embedding(pos, old) is pos


def test_load_state_dict_adapts_image_size_and_head(tmp_path):
    cfg = CONFIGS[0]
    tv, _ = _pair(cfg, seed=1)
    big = VisionTransformer(**{**cfg, "image_size": 48, "num_classes": 2}).eval()
    info = load_vit_state_dict(big, tv.state_dict())
    assert info == {"interpolated_pos_embedding": [17, 37], "new_head": True}
    ref = interpolate_pos_embedding(tv.encoder.pos_embedding.detach(), 6)
    torch.testing.assert_close(big.encoder.pos_embedding.detach(), ref)
    assert big.heads.head.weight.abs().sum() == 0  # the new head is the model's own zero init
    torch.testing.assert_close(big.conv_proj.weight, tv.conv_proj.weight)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 30, "patch_size": 8}, r"image_size \(30\) must be divisible by patch_size \(8\)"),
    ({"hidden_dim": 30, "num_heads": 4}, r"hidden_dim \(30\) must be divisible by num_heads \(4\)"),
    ({"num_layers": 0}, r"num_layers must be a positive integer, got 0"),
    ({"dropout": 1.0}, r"dropout must lie in \[0, 1\), got 1.0"),
])
def test_constructor_errors(kwargs, match):
    cfg = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 8,
           **kwargs}
    with pytest.raises(ValueError, match=match):
        VisionTransformer(**cfg)


def test_forward_rejects_wrong_image_size():
    model = VisionTransformer(32, 8, 1, 2, 16, 8)
    with pytest.raises(ValueError, match=r"expected images Tensor\[B, 3, 32, 32\], got \(1, 3, 40, 40\)"):
        model(torch.zeros(1, 3, 40, 40))


def test_attention_with_custom_head_sizes():
    from vislab.models.vit import MultiHeadSelfAttention

    mha = MultiHeadSelfAttention(20, 4, head_dim_qk=3, head_dim_v=5, out_dim=7)
    assert mha.in_proj_weight.shape == (4 * (3 + 3 + 5), 20) and mha.out_proj.weight.shape == (7, 20)
    x = torch.randn(2, 9, 20)
    out, w = mha(x, need_weights=True)
    assert out.shape == (2, 9, 7) and w.shape == (2, 4, 9, 9)
    mha.fused = True
    torch.testing.assert_close(mha(x)[0], out, rtol=0, atol=1e-6)
    # head 1 by hand: its query/key rows 3..5 of the query and key blocks, value rows 5..9 of the value block
    wq, wk, wv = mha.in_proj_weight.split([12, 12, 20])
    bq, bk, bv = mha.in_proj_bias.split([12, 12, 20])
    q, k = x @ wq[3:6].T + bq[3:6], x @ wk[3:6].T + bk[3:6]
    torch.testing.assert_close(w[:, 1], (q @ k.transpose(1, 2) / 3 ** 0.5).softmax(-1), rtol=0, atol=1e-6)
    assert wv.shape == (20, 20) and bv.shape == (20,)
    with pytest.raises(ValueError, match="head_dim_qk must be a positive integer, got 0"):
        MultiHeadSelfAttention(20, 4, head_dim_qk=0)  # 0 is an error, not "the default"


def test_registry_builder_defaults():
    from vislab.models.vit import vit

    model = vit(num_classes=5)
    assert (model.image_size, model.patch_size, model.num_layers, model.hidden_dim) == (32, 4, 6, 96)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
