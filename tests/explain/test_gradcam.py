import numpy as np
import pytest
import torch

from vislab.explain.gradcam import GradCAM, last_conv_name, pointing_game
from vislab.models import create_model

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def _reference(model, layer_module, x, targets):
    cam = pytorch_grad_cam.GradCAM(model=model, target_layers=[layer_module])
    return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


@pytest.mark.parametrize("layer", ["features.0", "features.4", "features.8"])
def test_matches_pytorch_grad_cam_small_cnn(layer):
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=5).eval()
    x = torch.randn(4, 3, 64, 64)
    targets = torch.tensor([0, 1, 2, 3])
    ours, _ = GradCAM(model, layer)(x, targets)
    ref = _reference(model, dict(model.named_modules())[layer], x, targets)
    assert ours.shape == (4, 64, 64)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)


def test_matches_pytorch_grad_cam_efficientnet_default_layer():
    from vislab.models.backbones import create_classifier

    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", num_classes=3, pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96)
    cam = GradCAM(model)  # default: the last nn.Conv2d
    assert cam.layer_name == last_conv_name(model) == "features.conv_head"
    ours, logits = cam(x)
    ref = _reference(model, cam.layer, x, logits.argmax(1))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)


def test_cam_points_at_the_evidence():
    """A hand-built 'detector': class 1's score is the sum of the red channel in the image's left half."""
    conv = torch.nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0] = 1.0

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            a = self.conv(x)  # (B, 2, H, W)
            return torch.stack([a[:, 0].mean((1, 2)), a[:, 1, :, :8].mean((1, 2))], 1)

    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 4:8, 2:6] = 1.0  # a red square on the left
    cams, _ = GradCAM(Net(), "conv")(x, [1], upsample=False)
    assert cams[0, 5, 3] == pytest.approx(1.0)
    assert cams[0, 12, 12] == 0.0
    assert pointing_game(cams, [(2, 4, 6, 8)]) == [True]
    assert pointing_game(cams, [(10, 10, 16, 16)]) == [False]


def test_errors():
    model = create_model("small_cnn", num_classes=2)
    with pytest.raises(ValueError, match="has no layer named 'nope'"):
        GradCAM(model, "nope")
    with pytest.raises(ValueError, match=r"expected images Tensor\[B, C, H, W\], got shape \(3, 8, 8\)"):
        GradCAM(model)(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="one class per image"):
        GradCAM(model)(torch.zeros(2, 3, 8, 8), [0])
    with pytest.raises(ValueError, match="has no nn.Conv2d"):
        GradCAM(torch.nn.Linear(3, 2))
