import math

import pytest
import torch

from vislab.data.augment import RandomAffineBatch, RandomDihedralShiftBatch


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


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square image ``Tensor[C, S, S]``."""
    out = []
    for t in (x, x.transpose(-1, -2)):
        out += [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
    return out


def test_dihedral_without_shift_gives_each_of_the_8_symmetries_exactly():
    x = torch.randn(200, 3, 6, 6)
    y = RandomDihedralShiftBatch(shift=0).train()(x, generator=torch.Generator().manual_seed(0))
    seen = set()
    for i in range(len(x)):
        k = [j for j, t in enumerate(_dihedral(x[i])) if torch.equal(y[i], t)]
        assert k, f"image {i} is not a symmetry of its input"
        seen.add(k[0])
    assert seen == set(range(8))


def test_shift_moves_content_by_whole_pixels_repeating_the_border():
    x = torch.randn(300, 2, 7, 7)
    aug = RandomDihedralShiftBatch(shift=2, dihedral=False).train()
    y = aug(x, generator=torch.Generator().manual_seed(3))
    shifts = set()
    for i in range(len(x)):
        found = None
        for t in (x[i], x[i].flip(-1)):
            for dx in range(-2, 3):
                for dy in range(-2, 3):
                    rows = (torch.arange(7) - dy).clamp(0, 6)
                    cols = (torch.arange(7) - dx).clamp(0, 6)
                    if torch.equal(y[i], t[:, rows][:, :, cols]):
                        found = (dx, dy)
        assert found is not None, i
        shifts.add(found)
    assert len(shifts) == 25  # every shift in [-2, 2]² occurs


def test_sharp_augmentation_is_identity_in_eval_and_checks_its_arguments():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(RandomDihedralShiftBatch().eval()(x), x)
    with pytest.raises(ValueError, match="whole number of pixels"):
        RandomDihedralShiftBatch(shift=1.5)
    with pytest.raises(ValueError, match=r"Tensor\[B, C, H, W\]"):
        RandomDihedralShiftBatch().train()(torch.randn(3, 8, 8))
