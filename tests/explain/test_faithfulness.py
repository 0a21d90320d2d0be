"""Deletion/insertion on constructed cases with known curves, ROAD against pytorch-grad-cam's, and the
cascading model-randomisation check (a map that ignores the weights fails, Grad-CAM passes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vislab.explain.cams import GradCAM, LayerCAM, RandomCAM
from vislab.explain.faithfulness import (
    auc,
    cascade_stages,
    deletion_curve,
    gaussian_blur,
    insertion_curve,
    model_randomisation,
    noisy_linear_impute,
    road,
    spearman,
)
from vislab.models import create_model


class PixelSum(nn.Module):
    """A linear 'classifier': logit 0 = sum of w ⊙ x over pixels and channels, logit 1 = 0."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_deletion_by_hand_four_pixels():
    # one channel 2x2, values 4, 3, 2, 1; logit = their sum; the mean substrate is 2.5 everywhere
    x = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])
    model = PixelSum(torch.ones(1, 1, 2, 2))
    sal = x[:, 0]  # the order 4, 3, 2, 1
    d = deletion_curve(model, x, sal, [0], perturbation="mean", step=1, score="logit")
    torch.testing.assert_close(d.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    # 10 → 4 becomes 2.5: 8.5 → 3 becomes 2.5: 8 → 2 becomes 2.5: 8.5 → 10
    torch.testing.assert_close(d.scores, torch.tensor([[10.0, 8.5, 8.0, 8.5, 10.0]]))
    assert float(d.auc) == pytest.approx((5 + 8.5 + 8 + 8.5 + 5) / 4)  # trapezoids: 8.75
    ins = insertion_curve(model, x, sal, [0], perturbation="mean", step=1, score="logit")
    torch.testing.assert_close(ins.scores, torch.tensor([[10.0, 11.5, 12.0, 11.5, 10.0]]))
    # two pixels per step: 0, 0.5, 1
    d2 = deletion_curve(model, x, sal, [0], perturbation="mean", step=2, score="logit")
    torch.testing.assert_close(d2.scores, torch.tensor([[10.0, 8.0, 10.0]]))
    # a last partial step: 3 pixels per step → 0, 0.75, 1
    d3 = deletion_curve(model, x, sal, [0], perturbation="mean", step=3, score="logit")
    torch.testing.assert_close(d3.fractions, torch.tensor([0.0, 0.75, 1.0]))
    torch.testing.assert_close(d3.scores, torch.tensor([[10.0, 8.5, 10.0]]))


def test_deletion_and_insertion_equal_the_closed_form_on_a_linear_model():
    g = torch.Generator().manual_seed(0)
    B, C, H, W = 3, 3, 8, 8
    x = torch.rand(B, C, H, W, generator=g)
    w = torch.randn(1, C, H, W, generator=g)
    model = PixelSum(w)
    base = gaussian_blur(x)
    contrib = ((x - base) * w).sum(1)  # (B, H, W): what removing each pixel takes off the logit
    for sal in (contrib, torch.rand(B, H, W, generator=g)):
        d = deletion_curve(model, x, sal, [0] * B, step=5, score="logit", batch_size=7)
        i = insertion_curve(model, x, sal, [0] * B, step=5, score="logit", batch_size=7)
        order = sal.flatten(1).argsort(dim=1, descending=True, stable=True)
        removed = contrib.flatten(1).gather(1, order).cumsum(1)  # (B, HW)
        counts = [0, *range(5, H * W, 5), H * W]
        with torch.no_grad():
            full, start = model(x)[:, 0], model(base)[:, 0]
        want_d = torch.stack([full - (removed[:, c - 1] if c else 0) for c in counts], 1)
        want_i = torch.stack([start + (removed[:, c - 1] if c else 0) for c in counts], 1)
        torch.testing.assert_close(d.scores, want_d, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(i.scores, want_i, atol=1e-4, rtol=1e-5)
        fr = torch.tensor(counts, dtype=torch.float32) / (H * W)
        torch.testing.assert_close(d.auc, torch.from_numpy(np.trapezoid(want_d.numpy(), fr.numpy(), axis=1)),
                                   atol=1e-4, rtol=1e-5)
    # the map that orders by true contribution beats a random one on both curves
    best_d = deletion_curve(model, x, contrib, [0] * B, step=5, score="logit").auc
    rand_d = deletion_curve(model, x, torch.rand(B, H, W, generator=g), [0] * B, step=5, score="logit").auc
    assert (best_d < rand_d).all()


def test_probability_curves_and_auc_bounds():
    model = create_model("small_cnn", num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    d = deletion_curve(model, x, torch.rand(2, 16, 16), step=32)
    assert d.scores.shape == (2, 9) and ((d.scores >= 0) & (d.scores <= 1)).all()
    assert ((d.auc >= 0) & (d.auc <= 1)).all()
    torch.testing.assert_close(d.scores[:, 0], model(x).softmax(1).max(1).values)
    torch.testing.assert_close(auc(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([[1.0, 1.0, 0.0]])),
                               torch.tensor([0.75]))


def test_errors():
    model = PixelSum(torch.ones(1, 1, 2, 2))
    x = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"saliency must be Tensor\[B, H, W\] = \[1, 2, 2\]"):
        deletion_curve(model, x, torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="perturbation must be one of blur, mean, got 'zero'"):
        deletion_curve(model, x, torch.ones(1, 2, 2), perturbation="zero")
    with pytest.raises(ValueError, match="step must be a positive int, got 0"):
        insertion_curve(model, x, torch.ones(1, 2, 2), step=0)
    with pytest.raises(ValueError, match="non-finite"):
        road(model, x, torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="order must be 'morf', 'lerf' or 'combined'"):
        road(model, x, torch.ones(1, 2, 2), order="both")
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 2\)"):
        road(model, x, torch.ones(1, 2, 2), [5])


# --- ROAD ---------------------------------------------------------------------------------------------

pgc = pytest.importorskip("pytorch_grad_cam")


def test_imputation_equals_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 12, 10, generator=g)
    keep = (torch.rand(12, 10, generator=g) > 0.6).float()
    keep[0, 0] = 0  # a corner and an edge imputed: the weights outside the image are dropped
    keep[5, 9] = 0
    torch.manual_seed(3)
    ref = NoisyLinearImputer(noise=0.01)(img, keep)
    torch.manual_seed(3)
    ours = noisy_linear_impute(img, keep.bool())
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    exact = noisy_linear_impute(img, keep.bool(), noise=0.0)
    torch.testing.assert_close(exact[:, keep.bool()], img[:, keep.bool()])  # kept pixels untouched
    # an imputed interior pixel is the weighted mean of its neighbours
    r, c = [(r, c) for r in range(1, 11) for c in range(1, 9) if not keep[r, c]][0]
    nb = exact[:, r - 1:r + 2, c - 1:c + 2]
    w = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    torch.testing.assert_close((nb * w).sum((1, 2)), exact[:, r, c], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18"])
def test_road_equals_pytorch_grad_cam(model_name):
    import torchvision
    from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = (create_model("small_cnn", num_classes=4) if model_name == "small_cnn"
             else torchvision.models.resnet18(num_classes=4)).eval()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    targets = [1, 3]
    cams, _ = GradCAM(model, "features.4" if model_name == "small_cnn" else "layer2")(x, targets)
    ref_targets = [ClassifierOutputTarget(t) for t in targets]
    cases = [(ROADMostRelevantFirst(80), dict(order="morf", percentiles=[80])),
             (ROADLeastRelevantFirst(20), dict(order="lerf", percentiles=[20])),
             (ROADCombined(percentiles=[20, 50, 80]), dict(order="combined", percentiles=[20, 50, 80]))]
    for ref_metric, kw in cases:
        torch.manual_seed(7)
        ref = ref_metric(x, cams.numpy(), ref_targets, model)
        torch.manual_seed(7)
        ours = road(model, x, cams, targets, **kw)
        np.testing.assert_allclose(ours.numpy(), np.asarray(ref).reshape(-1), atol=1e-5, rtol=0)
        assert np.abs(ours.numpy()).max() > 1e-4  # the images' scores did change


# --- model randomisation ------------------------------------------------------------------------------

def test_spearman_matches_definition_with_ties():
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0, 0.5]])
    b = torch.tensor([[5.0, 1.0, 1.0, 2.0, 0.0]])
    # average ranks: a → 2, 3.5, 3.5, 5, 1; b → 5, 2.5, 2.5, 4, 1
    ra, rb = np.array([2, 3.5, 3.5, 5, 1]), np.array([5, 2.5, 2.5, 4, 1])
    want = np.corrcoef(ra, rb)[0, 1]
    assert float(spearman(a, b)) == pytest.approx(want)
    assert float(spearman(a, a ** 3)) == pytest.approx(1.0)
    assert float(spearman(a, -a)) == pytest.approx(-1.0)
    assert spearman(torch.zeros(1, 4), torch.zeros(1, 4)).tolist() == [1.0]
    assert spearman(torch.zeros(1, 4), a[:, :4]).tolist() == [0.0]


def test_randomisation_fails_a_map_that_ignores_the_weights_and_passes_gradcam():
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    stages = cascade_stages(model, "features.8", groups=3)
    random = model_randomisation(lambda m: RandomCAM(m, "features.8", seed=0), model, x, stages=stages)
    torch.testing.assert_close(random.correlation, torch.ones_like(random.correlation))
    assert not random.passed.any()

    class Edges(GradCAM):  # a 'method' that reads the image only
        def raw_cam(self, images, acts, grads, targets):
            return images.abs().sum(1)

    edges = model_randomisation(lambda m: Edges(m, "features.8"), model, x, stages=stages)
    assert not edges.passed.any() and float(edges.correlation.min()) > 0.999

    gc = model_randomisation(lambda m: GradCAM(m, "features.8"), model, x, stages=stages)
    assert gc.correlation.shape == (len(stages), 3)
    assert gc.passed.all(), gc.correlation
    lc = model_randomisation(lambda m: LayerCAM(m, "features.8"), model, x)
    assert lc.stages[0] == [cascade_stages(model)[0][0]] and lc.stages[0][0] == "head.4"
    for k, v in model.state_dict().items():  # the trained model is untouched
        torch.testing.assert_close(v, before[k])


def test_cascade_stages_order_and_groups():
    model = create_model("small_cnn", num_classes=3)
    names = [n for group in cascade_stages(model) for n in group]
    own = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    assert names == own[::-1]
    down = [n for group in cascade_stages(model, "features.8") for n in group]
    assert down[-1] == "features.8" and "features.0" not in down
    groups = cascade_stages(model, groups=2)
    assert len(groups) == 2 and [n for g in groups for n in g] == names
    with pytest.raises(ValueError, match="no module named 'nope'"):
        cascade_stages(model, "nope")


def test_road_batches_across_percentiles_without_changing_the_result():
    model = create_model("small_cnn", num_classes=3).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    a = road(model, x, maps, percentiles=[20, 50, 80], generator=torch.Generator().manual_seed(0), batch_size=2)
    b = road(model, x, maps, percentiles=[20, 50, 80], generator=torch.Generator().manual_seed(0), batch_size=64)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    c = road(model, x, maps, percentiles=[20, 50, 80], generator=torch.Generator().manual_seed(1), batch_size=64)
    assert not torch.allclose(a, c)  # the generator's noise is used
