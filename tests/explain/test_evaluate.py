"""explanation_table and methods_figure on tiny models: every measure present per image, with values that
follow from the construction (a random map fails the sanity check, a map on the evidence wins the pointing game)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.explain.evaluate import BETTER, MEASURES, explanation_table, methods_figure, summarise, summarise_intervals
from vislab.models import create_model
from vislab.models.vit import VisionTransformer


def _cnn():
    torch.manual_seed(0)
    return create_model("small_cnn", num_classes=3).eval()


def test_table_on_a_small_cnn_with_boxes_and_masks():
    model = _cnn()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    boxes = [[0, 0, 16, 16], [8, 8, 32, 32], [0, 0, 32, 32]]
    methods = ["gradcam", "layercam", "scorecam", "random"]
    table = explanation_table(model, "features.8", x, None, boxes, methods=methods, step=64,
                              road_percentiles=[30, 70], method_kwargs={"scorecam": {"batch_size": 16}})
    assert list(table["methods"]) == methods and table["layer"] == "features.8" and table["n_images"] == 3
    with torch.no_grad():
        assert table["targets"] == model(x).argmax(1).tolist()
    for name, row in table["methods"].items():
        for k in ("pointing_game", "deletion_auc", "insertion_auc", "road", "sanity_correlation", "sanity_passed"):
            assert len(row[k]) == 3, (name, k)
        assert row["ms_per_image"] > 0
        assert all(0 <= v <= 1 for v in row["deletion_auc"] + row["insertion_auc"])
        assert table["cams"][name].shape == (3, 32, 32)
    assert table["methods"]["random"]["sanity_correlation"] == [1.0, 1.0, 1.0]
    assert table["methods"]["random"]["sanity_passed"] == [False, False, False]
    assert all(table["methods"]["gradcam"]["sanity_passed"])
    assert table["methods"]["gradcam"]["pointing_game"][2] is True  # the whole image
    # masks: the pointing game equals the one with the same region as a box
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    t2 = explanation_table(model, "features.8", x, None, masks, methods=["gradcam"], step=64, road_percentiles=[50],
                           sanity=False)
    assert t2["methods"]["gradcam"]["pointing_game"] == table["methods"]["gradcam"]["pointing_game"]
    assert t2["methods"]["gradcam"]["sanity_correlation"] is None
    s = summarise(table)
    assert s["random"]["sanity_passed"] == 0.0 and set(MEASURES) <= set(s["gradcam"])
    # the summaries' form: mean, interval and per-image values; what was not computed is left out
    iv = summarise_intervals(table)
    assert iv["random"]["sanity_passed"] == {"mean": 0.0, "ci95": [0.0, 0.0], "per_image": [0.0, 0.0, 0.0]}
    dl = iv["gradcam"]["deletion_auc"]
    assert dl["per_image"] == table["methods"]["gradcam"]["deletion_auc"]
    assert dl["ci95"][0] <= dl["mean"] <= dl["ci95"][1]
    assert iv["gradcam"]["ms_per_image"] == table["methods"]["gradcam"]["ms_per_image"]
    assert "sanity_correlation" not in summarise_intervals(t2)["gradcam"]
    assert set(BETTER) == set(MEASURES)


def test_pointing_game_follows_the_evidence():
    """Class 1's logit is the red channel's sum in the top-left quarter: LayerCAM at a 1x1 conv finds it."""
    conv = torch.nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0] = 1.0

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            a = self.conv(x)
            return torch.stack([a[:, 0].mean((1, 2)), a[:, 1, :8, :8].mean((1, 2))], 1)

    x = torch.zeros(2, 3, 16, 16)
    x[:, 0, 2:6, 2:6] = 1.0
    table = explanation_table(Net(), "conv", x, [1, 1], [[1, 1, 7, 7], [9, 9, 16, 16]], methods=["layercam"],
                              step=16, road_percentiles=[50], sanity=False)
    assert table["methods"]["layercam"]["pointing_game"] == [True, False]


def test_table_on_a_vit_has_the_attention_methods(monkeypatch):
    """The attention methods read every block, so their randomisation check runs down to the input; the CAMs'
    down to the explained layer."""
    import vislab.explain.evaluate as ev

    seen = {}
    real = ev.model_randomisation
    monkeypatch.setattr(ev, "model_randomisation", lambda explain, m, *a, stages, **kw: seen.setdefault(
        type(explain(m)).__name__, stages) and real(explain, m, *a, stages=stages, **kw))
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=3).eval()
    torch.nn.init.normal_(vit.heads.head.weight)
    x = torch.randn(2, 3, 32, 32)
    table = explanation_table(vit, None, x, methods=["gradcam", "rollout", "gradattention"], step=128,
                              road_percentiles=[50], sanity_groups=2)
    assert table["layer"] == "encoder.layers.encoder_layer_1.ln_1"
    assert set(table["methods"]) == {"gradcam", "rollout", "gradattention"}
    assert len(table["methods"]["rollout"]["sanity_correlation"]) == 2
    down_to = {k: v[-1][-1] for k, v in seen.items()}  # the last module re-initialised
    assert down_to["GradCAM"].startswith("encoder.layers.encoder_layer_1.")
    assert all("conv_proj" in sum(v, []) for k, v in seen.items() if k != "GradCAM")  # the patch embedding too
    assert "conv_proj" not in sum(seen["GradCAM"], [])
    assert len(seen) == 3


def test_errors():
    model = _cnn()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown explanation method 'nope'"):
        explanation_table(model, None, x, methods=["nope"])
    with pytest.raises(ValueError, match="method 'rollout' explains a ViT's attention"):
        explanation_table(model, None, x, methods=["rollout"])
    with pytest.raises(ValueError, match="boxes must be one"):
        explanation_table(model, None, x, None, [[0, 0, 1]], methods=["gradcam"], sanity=False, step=64,
                          road_percentiles=[50])


def test_methods_figure(tmp_path):
    imgs = torch.rand(2, 3, 24, 24)
    cams = {"gradcam": torch.rand(2, 24, 24), "random": torch.rand(2, 24, 24)}
    path = methods_figure(imgs, cams, tmp_path / "methods.png", row_titles=["cat", "dog"])
    w, h = Image.open(path).size
    assert w > h  # two rows of three tiles
    assert np.asarray(Image.open(path)).std() > 0
    with pytest.raises(ValueError, match="gradcam: 1 maps for 2 images"):
        methods_figure(imgs, {"gradcam": torch.rand(1, 24, 24)}, tmp_path / "x.png")
