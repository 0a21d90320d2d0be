"""The CAM family against pytorch-grad-cam 1.5 (the test extra ``grad-cam``) on torchvision and vislab models,
several layers, and a ViT through a reshape transform; plus the registry, the random baseline and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from vislab.explain.cams import (
    CAM_METHODS,
    AblationCAM,
    GradCAM,
    RandomCAM,
    ScoreCAM,
    build_cam,
    default_cam_layer,
    get_cam_method,
    token_grid,
)
from vislab.models import create_model
from vislab.models.vit import VisionTransformer

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

REFERENCE = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
             "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM, "scorecam": pgc.ScoreCAM,
             "ablationcam": pgc.AblationCAM}
ATOL = 1e-5


class _ZeroAblation(AblationLayer):
    """pytorch-grad-cam's ablation layer with the paper's ablation (zero) on every layer; its own writes
    ``min - 1e7`` (growing along the batch) when the layer's minimum is not 0."""

    def __call__(self, x):
        out = self.activations
        for i in range(out.size(0)):
            out[i, self.indices[i], :] = 0
        return out


class _ZeroAblationVit(AblationLayerVit):
    def __call__(self, x):
        out = self.activations.transpose(1, self.activations.ndim - 1)
        for i in range(out.size(0)):
            out[i, self.indices[i], :] = 0
        return out.transpose(out.ndim - 1, 1)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=6).eval()
    if name == "mobilenet_v3_small":
        m = torchvision.models.mobilenet_v3_small(num_classes=6).eval()
        # torchvision's head init (std 0.01) gives gradients ~1e-5 at the middle blocks, under Grad-CAM++'s
        # 1e-6 epsilon and the scaling's 1e-7 (both pytorch-grad-cam's): blank maps that would compare nothing
        torch.nn.init.normal_(m.classifier[3].weight, std=1.0)
        return m
    if name == "squeezenet1_1":  # ReLU(inplace=True) after its convs, as VGG
        m = torchvision.models.squeezenet1_1(num_classes=6).eval()
        torch.nn.init.normal_(m.classifier[1].weight, std=1.0)  # its head init (std 0.01): gradients ~1e-5, as above
        return m
    if name == "small_cnn":
        return create_model("small_cnn", num_classes=6).eval()
    vit = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=6).eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision's zero head would give zero gradients
    return vit


CASES = [  # (model, layer, image size, post-ReLU layer)
    ("resnet18", "layer4", 64, True),
    ("resnet18", "layer3.1.conv2", 64, False),
    ("resnet18", "layer2", 48, True),
    ("mobilenet_v3_small", "features.11", 96, False),
    ("mobilenet_v3_small", "features.8.block.2", 64, False),
    ("squeezenet1_1", "features.3.squeeze", 64, False),  # a conv whose output the next ReLU changes in place
    ("squeezenet1_1", "features.12", 64, True),
    ("small_cnn", "features.4", 48, True),
    ("small_cnn", "features.8", 48, True),
    ("vit", "encoder.layers.encoder_layer_1.ln_1", 32, False),
    ("vit", "encoder.layers.encoder_layer_0.ln_2", 32, False),
]


def _reference(method, model, layer, x, targets, rt, *, zero_ablation):
    kwargs = {}
    if method == "ablationcam":
        if rt is not None:
            kwargs["ablation_layer"] = _ZeroAblationVit() if zero_ablation else AblationLayerVit()
        elif zero_ablation:
            kwargs["ablation_layer"] = _ZeroAblation()
        kwargs["batch_size"] = 64
    cam = REFERENCE[method](model=model, target_layers=[layer], reshape_transform=rt, **kwargs)
    if method == "scorecam":
        cam.batch_size = 64
    return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def _slow(method: str, model_name: str, layer: str) -> bool:
    """Score-CAM and Ablation-CAM on 256- and 512-channel layers: 6-18 s each on 2 busy cores."""
    return method in ("scorecam", "ablationcam") and (
        (model_name == "resnet18" and layer != "layer2") or (model_name, layer) == ("squeezenet1_1", "features.12"))


@pytest.mark.parametrize(("method", "model_name", "layer", "size", "post_relu"), [
    pytest.param(method, *case, id=f"{case[0]}-{case[1]}-{method}",
                 marks=[pytest.mark.slow] if _slow(method, *case[:2]) else [])
    for case in CASES for method in REFERENCE])
def test_equals_pytorch_grad_cam(method, model_name, layer, size, post_relu, monkeypatch):
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", lambda it, *a, **k: it)  # the reference's progress bars
    model = _model(model_name)
    rt = token_grid() if model_name == "vit" else None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, generator=g)
    targets = torch.tensor([1, 4])
    if method in ("scorecam", "ablationcam") and model_name in ("resnet18", "mobilenet_v3_small", "squeezenet1_1"):
        x, targets = x[:1], targets[:1]  # K forwards per image: one image keeps the test short
    module = dict(model.named_modules())[layer]
    kwargs = {"batch_size": 48} if method in ("scorecam", "ablationcam") else {}
    ours, logits = CAM_METHODS[method](model, layer, reshape_transform=rt, **kwargs)(x, targets)
    ref = _reference(method, model, module, x, targets, rt, zero_ablation=not post_relu)
    assert ours.shape == (len(x), size, size) and ours.dtype == torch.float32
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
    np.testing.assert_allclose(ours.numpy(), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, model(x))
    assert ours.flatten(1).std(1).max() > 0.01  # not blank maps: the comparison says something


def test_ablation_cam_on_a_post_relu_layer_equals_the_reference_default():
    """Where the layer's minimum is 0, pytorch-grad-cam's own ablation layer zeroes too: equal with no help."""
    model = _model("resnet18")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    ours, _ = AblationCAM(model, "layer2", batch_size=7)(x, [2])  # a batch size that does not divide 128
    ref = _reference("ablationcam", model, model.layer2, x, [2], None, zero_ablation=False)
    np.testing.assert_allclose(ours.numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
def test_masked_forwards_do_not_depend_on_the_batch_size(cls):
    model = _model("small_cnn")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    a, _ = cls(model, "features.4", batch_size=5)(x)
    b, _ = cls(model, "features.4", batch_size=1000)(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_random_cam_channels_equals_reference_and_map_ignores_the_model():
    model = _model("small_cnn")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ours, _ = RandomCAM(model, "features.8", seed=5, kind="channels")(x, [0, 1])
    np.random.seed(5)
    ref = pgc.RandomCAM(model=model, target_layers=[model.features[8]])(
        input_tensor=x, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    np.testing.assert_allclose(ours.numpy(), ref, atol=ATOL, rtol=0)
    a, _ = RandomCAM(model, "features.8", seed=5)(x)
    other = _model("resnet18")
    b, _ = RandomCAM(other, "layer2", seed=5)(x)
    assert a.shape == (2, 32, 32)
    c, _ = RandomCAM(model, "features.8", seed=6)(x)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(a, RandomCAM(model, "features.8", seed=5)(x)[0])  # seeded: repeatable
    assert b.shape == a.shape


def test_gradcam_keeps_its_api():
    from vislab.explain.gradcam import GradCAM as FromGradcam

    assert GradCAM is FromGradcam
    model = _model("small_cnn")
    x = torch.randn(2, 3, 32, 32)
    low, _ = GradCAM(model, model.features[8])(x, upsample=False)
    assert low.shape[-1] < 32 and float(low.max()) == pytest.approx(1.0, abs=1e-6)


def test_registry_names_and_spellings():
    assert list(CAM_METHODS) == ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam",
                                 "scorecam", "ablationcam", "random"]
    assert get_cam_method("score-cam") is ScoreCAM
    assert get_cam_method("Grad-CAM++") is CAM_METHODS["gradcam++"]
    assert get_cam_method("gradcam_pp") is CAM_METHODS["gradcam++"]
    assert get_cam_method("Ablation_CAM") is AblationCAM
    with pytest.raises(ValueError, match="unknown CAM method 'fullgrad'; known: gradcam, gradcam\\+\\+"):
        get_cam_method("fullgrad")
    for name, cls in CAM_METHODS.items():
        assert cls.name == name


def test_default_layer_for_vit_and_cnn():
    vit = _model("vit")
    layer, rt = default_cam_layer(vit)
    assert layer == "encoder.layers.encoder_layer_1.ln_1" and rt is not None
    cams, _ = build_cam("layercam", vit)(torch.randn(2, 3, 32, 32))
    assert cams.shape == (2, 32, 32)
    wrapped = torch.nn.Sequential(vit)
    assert default_cam_layer(wrapped)[0] == "0.encoder.layers.encoder_layer_1.ln_1"
    assert default_cam_layer(_model("small_cnn")) == ("features.8", None)


def test_errors():
    model = _model("small_cnn")
    with pytest.raises(ValueError, match="has no layer named 'nope'"):
        ScoreCAM(model, "nope")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ScoreCAM(model, batch_size=0)
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 6\), got \[0, 9\]"):
        GradCAM(model)(torch.zeros(2, 3, 16, 16), [0, 9])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        GradCAM(lambda x: x)
    with pytest.raises(ValueError, match="kind must be 'map' or 'channels'"):
        RandomCAM(model, kind="noise")
    vit = _model("vit")
    with pytest.raises(ValueError, match=r"gives Tensor\[2, 17, 16\].*pass reshape_transform"):
        GradCAM(vit, "encoder.layers.encoder_layer_1.ln_1")(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="do not form a square grid"):
        token_grid()(torch.zeros(1, 6, 4))


def test_frozen_model_and_parameter_grads_untouched():
    """Gradients reach the layer with every parameter frozen (the input is tracked then), and no parameter's
    ``.grad`` is written: only the part of the graph above the layer is differentiated."""
    model = _model("small_cnn")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    want, _ = GradCAM(model, "features.4")(x, [0, 1])
    assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    got, _ = GradCAM(model, "features.4")(x, [0, 1])
    torch.testing.assert_close(got, want)
