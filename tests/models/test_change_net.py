"""The change-detection network (``vislab.models.change``): shapes, the correlation layer against its loop
reference, the symmetries of the augmentation against the convention, the loss, gradients, rebuild from config."""

import math

import numpy as np
import pytest
import torch

from vislab.data.pairs import render_pair
from vislab.models.change import (
    ARCHS,
    ChangeNet,
    augment_pairs,
    change_loss,
    gate,
    local_correlation,
    standardize,
)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [64, 96])
def test_forward_shapes_and_decode(arch, size):
    torch.manual_seed(0)
    net = ChangeNet(image_size=size, max_shift=size / 8, max_scale=1.3, arch=arch, hidden=32,
                    widths=(8, 8, 16) if arch == "siamese" else (8, 8, 16, 16))
    with torch.no_grad():
        out = net(torch.rand(3, 2, size, size))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    d = net.decode(out)
    assert torch.allclose(d["dx"], out[:, 0] * size / 8)
    assert torch.allclose(d["scale"], (out[:, 2] * math.log(1.3)).exp())
    assert d["type"].dtype == torch.int64 and d["logits"].shape == (3, 4)
    # brightness and contrast do not change the answer: each image is standardised inside
    x = torch.rand(2, 2, size, size)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), net(0.5 * x + 0.2), atol=1e-4)


def test_input_and_argument_errors():
    net = ChangeNet(image_size=64, max_shift=8, hidden=16, widths=(8, 8, 8, 8), arch="stacked")
    with pytest.raises(ValueError, match=r"x must be Tensor\[B, 2, 64, 64\]"):
        net(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="arch must be one of"):
        ChangeNet(arch="resnet")
    with pytest.raises(ValueError, match="3 encoder widths"):
        ChangeNet(arch="siamese", widths=(8, 8))
    with pytest.raises(ValueError, match=r"out must be Tensor\[B, 7\]"):
        net.decode(torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"target must be Tensor\[B, 4\]"):
        change_loss(net, torch.zeros(2, 7), torch.zeros(2, 3))


@pytest.mark.parametrize("d", [0, 1, 3])
def test_local_correlation_matches_its_definition_and_a_hand_value(d):
    g = torch.Generator().manual_seed(d)
    f1, f2 = torch.randn(2, 5, 7, 6, generator=g), torch.randn(2, 5, 7, 6, generator=g)
    c = local_correlation(f1, f2, d)
    assert c.shape == (2, (2 * d + 1) ** 2, 7, 6)
    ref = torch.zeros_like(c)  # the definition, one position and displacement at a time
    for k, (ddy, ddx) in enumerate((a, b) for a in range(-d, d + 1) for b in range(-d, d + 1)):
        for y in range(7):
            for x in range(6):
                if 0 <= y + ddy < 7 and 0 <= x + ddx < 6:
                    ref[:, k, y, x] = (f1[:, :, y, x] * f2[:, :, y + ddy, x + ddx]).sum(1) / 5
    torch.testing.assert_close(c, ref)
    if d:
        k = (d + 1) * (2 * d + 1) + (d - 1)  # displacement (dy, dx) = (+1, -1), row-major over [-d, d]²
        expected = (f1[1, :, 3, 2] * f2[1, :, 4, 1]).sum() / 5
        assert float(c[1, k, 3, 2]) == pytest.approx(float(expected), abs=1e-6)
        assert float(c[0, k, 6, 0]) == 0.0  # y + 1 and x − 1 fall outside: zero features
    with pytest.raises(ValueError, match="one shape"):
        local_correlation(f1, f2[:, :, :5], d)


def _blob_pair(dx: float, dy: float, s: float, size: int = 64) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    yy, xx = np.mgrid[0:300, 0:300].astype(np.float64)
    pts = [(150.0 + 12, 150.0 - 7), (150.0 - 10, 150.0 + 9)]
    src = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0) for x, y in pts).astype(np.float32)
    a, b = render_pair(src, (150.0, 150.0), dx=dx, dy=dy, scale=s, size=size)
    c = (size - 1) / 2
    return torch.from_numpy(np.stack([a, b])), [(x - 150.0 + c, y - 150.0 + c) for x, y in pts]


def _centroids(img: torch.Tensor) -> list[tuple[float, float]]:
    """Centroids of the two blobs of ``img`` (split by the image's anti-diagonal distance to each)."""
    from scipy import ndimage

    lab, n = ndimage.label(img.numpy() > 0.2)
    return [tuple(reversed(ndimage.center_of_mass(img.numpy(), lab, k))) for k in range(1, n + 1)]


def test_augmentation_keeps_the_convention():
    """After every symmetry, the blobs of the new img1 appear where the new target says in the new img2."""
    pairs, ys = [], []
    for dx, dy, s in [(5.0, -3.0, 1.15), (-4.0, 2.5, 0.87), (3.0, 6.0, 1.0), (0.0, 0.0, 1.2)]:
        x, _ = _blob_pair(dx, dy, s)
        pairs.append(x)
        ys.append([dx, dy, math.log(s), 3.0])
    x, y = torch.stack(pairs), torch.tensor(ys)
    c = 31.5
    seen = set()
    for seed in range(6):
        xa, ya = augment_pairs(x, y, generator=torch.Generator().manual_seed(seed))
        for i in range(len(x)):
            dx, dy, ls, _ = ya[i].tolist()
            s = math.exp(ls)
            seen.add(tuple(torch.sign(ya[i, :2] - y[i, :2]).tolist()))
            for p in _centroids(xa[i, 0]):
                q = (s * (p[0] - c) + c + dx, s * (p[1] - c) + c + dy)
                got = min(_centroids(xa[i, 1]), key=lambda g: math.hypot(g[0] - q[0], g[1] - q[1]))
                assert math.hypot(got[0] - q[0], got[1] - q[1]) < 0.1, (seed, i, p, q, got)
    assert len(seen) > 2  # several different symmetries were drawn
    assert torch.equal(y[:, 3], ya[:, 3])  # the type never changes


def test_loss_terms_weights_and_gradients():
    torch.manual_seed(0)
    net = ChangeNet(image_size=64, max_shift=8, max_scale=1.3, arch="stacked", widths=(8, 8, 16, 16), hidden=32)
    y = torch.tensor([[4.0, -2.0, 0.1, 3.0], [0.0, 0.0, 0.0, 0.0]])
    perfect = torch.cat([net.normalize_targets(y[:, 0], y[:, 1], y[:, 2]),
                         torch.nn.functional.one_hot(y[:, 3].long(), 4).float() * 50], dim=1)
    loss = change_loss(net, perfect, y)
    assert float(loss["loss"]) == pytest.approx(0.0, abs=1e-6)
    off = perfect.clone()
    off[:, 0] += 0.5
    a = change_loss(net, off, y, shift_weight=1.0)
    b = change_loss(net, off, y, shift_weight=3.0)
    assert float(b["loss"]) == pytest.approx(3 * float(a["loss"]))
    assert float(a["loss_scale"]) == pytest.approx(0.0, abs=1e-6) and float(a["loss_shift"]) > 0
    for arch in ARCHS:
        net = ChangeNet(image_size=64, max_shift=8, arch=arch, hidden=16,
                        widths=(8, 8, 8) if arch == "siamese" else (8, 8, 8, 8))
        change_loss(net, net(torch.rand(4, 2, 64, 64)), y.repeat(2, 1))["loss"].backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, (arch, missing)


def test_gate_and_rebuild_from_config():
    net = ChangeNet(image_size=64, max_shift=8, arch="siamese", widths=(8, 16, 16), hidden=32, max_displacement=3)
    again = ChangeNet(**net.config())
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}
    st = ChangeNet(image_size=96, max_shift=8, arch="stacked", widths=(8, 16, 16), hidden=32, coords=True)
    assert st.config()["coords"] is True and st.config()["widths"] == [8, 16, 16]
    assert ChangeNet(**st.config()).state_dict().keys() == st.state_dict().keys()
    assert st.trunk.body[0][0].in_channels == 4  # img1, img2, x, y
    d = {"dx": torch.tensor([1.0, 2.0, 3.0, 4.0]), "dy": torch.tensor([1.0, 2.0, 3.0, 4.0]),
         "log_s": torch.tensor([0.1, 0.1, 0.1, 0.1]), "scale": torch.full((4,), math.exp(0.1)),
         "type": torch.tensor([0, 1, 2, 3])}
    g = gate(d)
    assert g["dx"].tolist() == [0.0, 2.0, 0.0, 4.0] and g["log_s"].tolist() == pytest.approx([0, 0, 0.1, 0.1])
    assert g["scale"][1] == 1.0


def test_standardize():
    x = torch.rand(3, 2, 16, 16) * 5 + 2
    z = standardize(x)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(z.std(dim=(2, 3)), torch.ones(3, 2), atol=1e-3)
