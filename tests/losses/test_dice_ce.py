"""vislab.losses.DiceCELoss against MONAI's DiceCELoss(sigmoid=True) (the test-only reference)."""

import pytest
import torch

from vislab.losses.dice_ce import DiceCELoss, dice_ce_loss, soft_dice_loss

monai_losses = pytest.importorskip("monai.losses")


def _data(seed: int, shape=(4, 1, 13, 17), scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    target = (torch.rand(shape, generator=g) < 0.35).to(torch.float64)
    return logits, target


@pytest.mark.parametrize("squared_pred", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_monai(squared_pred, seed):
    logits, target = _data(seed)
    ref = monai_losses.DiceCELoss(sigmoid=True, squared_pred=squared_pred)(logits, target)
    ours = DiceCELoss(squared_pred=squared_pred)(logits, target)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("squared_pred", [False, True])
def test_equals_monai_with_weights_smoothing_and_empty_targets(squared_pred):
    logits, target = _data(5, shape=(3, 1, 8, 8), scale=6.0)
    target[1] = 0  # an empty target: the smoothing terms decide the Dice of that image
    kw = {"lambda_dice": 0.3, "lambda_ce": 1.7, "smooth_nr": 1e-3, "smooth_dr": 2e-3}
    ref = monai_losses.DiceCELoss(sigmoid=True, squared_pred=squared_pred, **kw)(logits, target)
    ours = dice_ce_loss(logits, target, squared_pred=squared_pred, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_gradients_equal_monai():
    logits, target = _data(7)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    DiceCELoss()(a, target).backward()
    monai_losses.DiceCELoss(sigmoid=True)(b, target).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_float32_and_bool_target():
    logits, target = _data(3)
    ref = monai_losses.DiceCELoss(sigmoid=True)(logits.float(), target.float())
    ours = dice_ce_loss(logits.float(), target.bool())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_hand_values():
    # perfect confident prediction: Dice term ~0, BCE ~0; the opposite: Dice ~1, BCE large
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    good = (target * 2 - 1) * 50
    assert dice_ce_loss(good, target).item() < 1e-4
    bad = -good
    assert soft_dice_loss(bad, target).item() == pytest.approx(1.0, abs=1e-5)
    # logits 0 -> p = 1/2 everywhere: dice = 1 - 2*0.5/(2 + 1) = 2/3, BCE = ln 2
    zero = torch.zeros(1, 1, 2, 2)
    expect = 1 - (2 * 0.5 + 1e-5) / (2.0 + 1.0 + 1e-5) + torch.log(torch.tensor(2.0)).item()
    assert dice_ce_loss(zero, target).item() == pytest.approx(expect, rel=1e-6)


def test_argument_errors():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"logits must be Tensor\[B, 1, H, W\]"):
        dice_ce_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"logits must be Tensor\[B, 1, H, W\]"):
        dice_ce_loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="target must have the shape"):
        dice_ce_loss(x, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="lambda_dice and lambda_ce must be >= 0"):
        DiceCELoss(lambda_dice=-1.0)
    with pytest.raises(ValueError, match="lambda_dice and lambda_ce must be >= 0"):
        dice_ce_loss(x, x, lambda_ce=-0.5)
    with pytest.raises(TypeError, match="floating-point"):
        dice_ce_loss(torch.zeros(2, 1, 4, 4, dtype=torch.long), x)
