import pytest
import torch
import torch.nn.functional as F

from vislab.errors import UserError
from vislab.models.backbones import create_classifier, imagenet_model_efficientnet_lite0


def _imagenet_input(img, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_offline_efficientnet_lite0_weights_are_real_imagenet_weights():
    """The packaged weights, mapped onto timm, recognise real photos: a cat and a cup of coffee."""
    from skimage import data

    model = imagenet_model_efficientnet_lite0()
    with torch.no_grad():
        cat = model(_imagenet_input(data.chelsea())).argmax(1).item()
        coffee = model(_imagenet_input(data.coffee())).argmax(1).item()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in (967, 968)  # espresso, cup


def test_classifier_has_new_head_and_pretrained_features():
    model = create_classifier("efficientnet_lite0", num_classes=4)
    assert model.fc.out_features == 4 and model.info.num_features == 1280
    assert model.info.pretrained_source is not None
    ref = imagenet_model_efficientnet_lite0()
    assert torch.equal(model.features.conv_stem.weight, ref.conv_stem.weight)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 4) and model.embed(x).shape == (2, 1280)
    rnd = create_classifier("efficientnet_lite0", num_classes=4, pretrained=False)
    assert rnd.info.pretrained_source is None
    assert not torch.equal(rnd.features.conv_stem.weight, ref.conv_stem.weight)


def test_missing_weights_are_an_error_not_a_random_init(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match=r"pretrained weights for resnet18 are not on this machine"):
        create_classifier("resnet18", num_classes=2)
    with pytest.raises(UserError, match="needs its weights as a file"):
        create_classifier("resnet10t", num_classes=2)
    with pytest.raises(UserError, match="unknown backbone"):
        create_classifier("no_such_net", num_classes=2)


def test_torchvision_weights_from_a_file(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = create_classifier("resnet18", num_classes=3, weights=str(path))
    assert torch.equal(model.features.conv1.weight, ref.conv1.weight)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
