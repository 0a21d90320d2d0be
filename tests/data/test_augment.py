import math

import pytest
import torch

from vislab.data.augment import RandomAffineBatch


def test_zero_ranges_are_identity():
    x = torch.randn(3, 2, 9, 7)
    aug = RandomAffineBatch(rotation=0, shift=0, shear=0, zoom=0, hflip=False).train()
    torch.testing.assert_close(aug(x), x, atol=1e-5, rtol=0)


def test_flip_only_gives_mirrors():
    x = torch.randn(16, 3, 8, 8)
    aug = RandomAffineBatch(rotation=0, shift=0, shear=0, zoom=0, hflip=True).train()
    y = aug(x, generator=torch.Generator().manual_seed(1))
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(16)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(16)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)


def test_matrix_ranges():
    aug = RandomAffineBatch(rotation=40, shift=0.2, shear=0.2, zoom=0.2, hflip=False)
    theta = aug.matrices(4000, generator=torch.Generator().manual_seed(0))
    lin = theta[:, :, :2]
    det = torch.linalg.det(lin)  # rotation and shear keep area; zoom divides it by scale^2
    assert det.min() >= 1 / 1.2**2 - 1e-5 and det.max() <= 1 / 0.8**2 + 1e-5
    assert theta[:, :, 2].abs().max() <= 0.4 + 1e-6  # 0.2 of the size = 0.4 normalised units
    # with only rotation, the matrix is a rotation by at most 40 degrees
    rot = RandomAffineBatch(rotation=40, shift=0, shear=0, zoom=0, hflip=False).matrices(1000)
    angles = torch.atan2(rot[:, 1, 0], rot[:, 0, 0]).abs()
    assert angles.max() <= math.radians(40) + 1e-6 and angles.max() > math.radians(35)


def test_eval_mode_and_errors():
    x = torch.randn(2, 3, 8, 8)
    assert RandomAffineBatch().eval()(x) is x
    with pytest.raises(ValueError, match=r"expected Tensor\[B, C, H, W\], got shape \(3, 8, 8\)"):
        RandomAffineBatch().train()(x[0])
    with pytest.raises(ValueError, match="zoom must be < 1"):
        RandomAffineBatch(zoom=1.5)
