"""Gradient-weighted attention (Chefer et al. 2021) and rollout with head fusion and discarding on hand-computed
two-block cases; the CAM-shaped wrappers on a vislab ViT."""

from __future__ import annotations

import pytest
import torch

from vislab.explain.attention import (
    AttentionRollout,
    GradientAttention,
    attention_gradients,
    attention_rollout,
    gradient_attention,
    relevance_matrix,
)
from vislab.models.vit import VisionTransformer


def test_gradient_attention_two_blocks_by_hand():
    a1 = torch.tensor([[[[.5, .3, .2], [.1, .8, .1], [.2, .2, .6]],
                        [[.2, .2, .6], [.3, .3, .4], [.5, .25, .25]]]])
    g1 = torch.tensor([[[[1., -1., 2.], [0., 1., 0.], [1., 1., 1.]],
                        [[-1., 2., 1.], [1., 0., -1.], [0., 0., 2.]]]])
    # (g ⊙ a)⁺: head 0 [[.5, 0, .4], [0, .8, 0], [.2, .2, .6]], head 1 [[0, .4, .6], [.3, 0, 0], [0, 0, .5]]
    # mean [[.25, .2, .5], [.15, .4, 0], [.1, .1, .55]]; R1 = I + that
    a2 = torch.full((1, 2, 3, 3), 1 / 3)
    g2 = torch.stack([torch.full((3, 3), 3.0), torch.full((3, 3), -3.0)])[None]  # head 0: 1 everywhere, head 1: 0
    # Ā2 = 0.5 everywhere: Ā2·R1 has every row = 0.5 × R1's column sums (1.5, 1.7, 2.05)
    r = relevance_matrix([a1, a2], [g1, g2])
    torch.testing.assert_close(r[0, 0], torch.tensor([1.25 + .75, .2 + .85, .5 + 1.025]))
    torch.testing.assert_close(r[0, 1], torch.tensor([.15 + .75, 1.4 + .85, 0 + 1.025]))
    torch.testing.assert_close(gradient_attention([a1, a2], [g1, g2]), torch.tensor([[1.05, 1.525]]))
    # one block: R = I + Ā1
    torch.testing.assert_close(gradient_attention([a1], [g1]), torch.tensor([[.2, .5]]))
    # negative evidence only: nothing flows, R = I
    torch.testing.assert_close(gradient_attention([a1, a2], [-g1.abs(), -g2.abs()]), torch.zeros(1, 2))


def test_rollout_two_blocks_max_fusion_and_discard_by_hand():
    h0 = torch.tensor([[.6, .3, .1], [.2, .45, .35], [.1, .1, .8]])
    h1 = torch.tensor([[.2, .2, .6], [.4, .4, .2], [.25, .65, .1]])
    # max fusion [[.6, .3, .6], [.4, .45, .35], [.25, .65, .8]]; int(9 · 0.25) = 2 lowest besides (0, 0):
    # .25 at (2, 0) and .3 at (0, 1). Then (A + I) / 2 with rows renormalised:
    # [[.8, 0, .3] / 1.1, [.2, .725, .175] / 1.1, [0, .325, .9] / 1.225]
    b1 = torch.stack([h0, h1])[None]
    f2 = torch.tensor([[.5, .2, .3], [.1, .6, .3], [.15, .35, .5]])
    b2 = torch.stack([f2, f2])[None]
    # block 2 drops .1 at (1, 0) and .15 at (2, 0): rows [.75, .1, .15], [0, .8, .15] / .95, [0, .175, .75] / .925
    col1 = .1 * (.725 / 1.1) + .15 * (.325 / 1.225)
    col2 = .75 * (.3 / 1.1) + .1 * (.175 / 1.1) + .15 * (.9 / 1.225)
    torch.testing.assert_close(attention_rollout([b1, b2], "max", 0.25), torch.tensor([[col1, col2]]))
    # min fusion without discarding on the same blocks: the head-wise minimum, identity added, rows renormalised
    mn = torch.minimum(h0, h1)
    a = (mn + torch.eye(3)) / 2
    a = a / a.sum(-1, keepdim=True)
    b = (f2 + torch.eye(3)) / 2
    want = (b @ a)[0, 1:]
    torch.testing.assert_close(attention_rollout([b1, b2], "min", 0.0), want[None])


def _vit(zero_head: bool = False) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=4).eval()
    if not zero_head:
        torch.nn.init.normal_(vit.heads.head.weight)
    return vit


def test_attention_gradients_are_the_autograd_gradients():
    vit = _vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits, att, grads = attention_gradients(vit, x, [1, 2])
    assert len(att) == len(grads) == 2 and grads[0].shape == (2, 2, 17, 17)
    # a finite difference along the gradient direction of block 0's attention of image 0 (the block's
    # attention is a leaf of the rest of the network once fixed: replace it through a forward hook)
    block = vit.encoder.layers[0].self_attention
    direction = torch.randn_like(att[0])
    eps = 1e-3

    def score(delta):
        orig = block.forward

        def patched(x_, *, need_weights=False):
            q, k, v = block.project(x_)
            w = ((q * block.scale) @ k.transpose(-2, -1)).softmax(-1) + delta
            out = (w @ v).transpose(1, 2).reshape(x_.shape[0], x_.shape[1], -1)
            return block.out_proj(out), w

        block.forward = patched
        try:
            with torch.no_grad():
                lo = vit(x)
        finally:
            block.forward = orig
        return lo[0, 1] + lo[1, 2]

    fd = (score(eps * direction) - score(-eps * direction)) / (2 * eps)
    torch.testing.assert_close(fd, (grads[0] * direction).sum(), atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(logits, vit(x).detach())


def test_cam_shaped_wrappers_on_a_vit():
    vit = _vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps, logits = GradientAttention(vit)(x, [0, 3])
    assert maps.shape == (2, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    other, _ = GradientAttention(vit)(x, [1, 1])
    assert not torch.allclose(maps, other)  # the relevance depends on the class
    roll, _ = AttentionRollout(vit, head_fusion="max", discard_ratio=0.5)(x)
    assert roll.shape == (2, 32, 32) and float(roll.max()) == pytest.approx(1.0, abs=1e-6)
    # torchvision's zero-initialised head: every gradient is 0, R = I, no patch is relevant
    blank, _ = GradientAttention(_vit(zero_head=True))(x)
    assert blank.abs().max() == 0


def test_errors():
    a = torch.full((1, 1, 3, 3), 1 / 3)
    with pytest.raises(ValueError, match="need one gradient per attention: 2 attentions, 1 gradients"):
        relevance_matrix([a, a], [a])
    with pytest.raises(ValueError, match=r"gradients\[0\] has shape \(1, 2, 3, 3\)"):
        relevance_matrix([a], [torch.zeros(1, 2, 3, 3)])
    with pytest.raises(ValueError, match="head_fusion must be one of mean, max, min"):
        AttentionRollout(_vit(), head_fusion="sum")
    with pytest.raises(ValueError, match=r"targets must be one class index in \[0, 4\)"):
        attention_gradients(_vit(), torch.zeros(1, 3, 32, 32), [7])
