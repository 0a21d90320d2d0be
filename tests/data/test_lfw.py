"""The embedded faces vs non-faces set and the in-memory dataset wrapper."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.data import lfw_subset

from vislab.data.lfw import LFW_CLASS_NAMES, TensorImageDataset, lfw_faces_vs_nonfaces


@pytest.fixture(scope="module")
def raw():
    return lfw_subset()  # (200, 25, 25) float64, shipped in the scikit-image wheel


def test_native_size_is_the_quantised_source_in_three_channels(raw):
    images, labels, names = lfw_faces_vs_nonfaces(image_size=25, seed=None)
    assert names == LFW_CLASS_NAMES == ("non-face", "face")
    assert images.shape == (200, 3, 25, 25) and images.dtype == torch.uint8
    expected = torch.from_numpy(np.round(raw * 255).astype(np.uint8))
    for c in range(3):
        # float32 vs float64 rounding may move a value exactly at .5 by one level
        assert (images[:, c].int() - expected.int()).abs().max() <= 1
    assert labels.dtype == torch.int64
    assert labels.tolist() == [1] * 100 + [0] * 100  # skimage: first 100 faces, then 100 non-faces


@pytest.mark.parametrize("size", [64, 12])
def test_resize_matches_torch_interpolate(raw, size):
    images, _, _ = lfw_faces_vs_nonfaces(image_size=size, seed=None)
    assert images.shape == (200, 3, size, size)
    ref = F.interpolate(torch.from_numpy(raw)[:, None].float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)
    ref = (ref.clamp(0, 1) * 255).round()
    assert (images[:, 0].float() - ref[:, 0]).abs().max() <= 1
    assert torch.equal(images[:, 0], images[:, 2])


def test_seeded_order_is_a_permutation_that_keeps_labels():
    base, base_labels, _ = lfw_faces_vs_nonfaces(image_size=25, seed=None)
    a, la, _ = lfw_faces_vs_nonfaces(image_size=25, seed=3)
    b, lb, _ = lfw_faces_vs_nonfaces(image_size=25, seed=3)
    c, _, _ = lfw_faces_vs_nonfaces(image_size=25, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c) and not torch.equal(a, base)
    original = {img.numpy().tobytes(): int(y) for img, y in zip(base, base_labels)}
    assert len(original) == 200  # all crops distinct, so the mapping below is well defined
    assert all(original[img.numpy().tobytes()] == int(y) for img, y in zip(a, la))
    assert int(la.sum()) == 100


def test_tensor_image_dataset_items():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.tensor([0, 1, 1, 0, 1]))
    assert len(ds) == 5
    img, y = ds[2]
    assert y == 1 and img.dtype == torch.float32
    torch.testing.assert_close(img, images[2].float() / 255)
    seen = []
    record = lambda x: seen.append(x.dtype) or x.float() - 1
    ds_t = TensorImageDataset(images, [0, 1, 1, 0, 1], transform=record)
    torch.testing.assert_close(ds_t[0][0], images[0].float() - 1)
    assert seen == [torch.uint8]
    floats = torch.rand(2, 3, 4, 4)
    assert torch.equal(TensorImageDataset(floats, torch.tensor([0, 1]))[1][0], floats[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        lfw_faces_vs_nonfaces(image_size=0)
    with pytest.raises(ValueError, match=r"images must be a Tensor\[N, C, H, W\], got \(3, 8, 8\)"):
        TensorImageDataset(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[2\].*got \(3,\)"):
        TensorImageDataset(torch.zeros(2, 3, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels must be integers, got dtype torch.float32"):
        TensorImageDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2))
