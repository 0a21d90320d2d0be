"""vislab.models.sam: official checkpoints load exactly; the offline SAM (frozen Lite0 + neck + SAM's prompt
encoder and mask decoder) at several sizes; only the decoder half trains; the batched decoder and the
box convention agree with segment-anything's own MaskDecoder and SamPredictor."""

import numpy as np
import pytest
import torch

from vislab.errors import UserError
from vislab.models.sam import (
    SAM_CHECKPOINT_URLS,
    build_offline_sam,
    lite0_stride16,
    load_sam,
    offline_box_sam,
    predict_masks_batched,
)


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_test.pth"
    torch.save(sam.state_dict(), path)  # the official format: a plain state dict
    return path, sam.state_dict()


def test_official_vit_b_checkpoint_loads_tensor_for_tensor(vit_b_file):
    path, ref = vit_b_file
    sam = load_sam("vit_b", path)
    got = sam.state_dict()
    assert list(got) == list(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert not sam.training


def test_checkpoint_errors(vit_b_file, tmp_path):
    path, ref = vit_b_file
    with pytest.raises(UserError, match="does not exist.*" + SAM_CHECKPOINT_URLS["vit_b"].replace(".", r"\.")):
        load_sam("vit_b", tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(UserError, match="sam_vit_h_4b8939"):
        load_sam("vit_h", tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="model_type must be one of vit_b, vit_l, vit_h"):
        load_sam("vit_x", path)
    broken = {k: ref[k] for k in list(ref)[:3]}  # a state dict that lacks most of SAM's tensors
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="not an official SAM vit_b checkpoint"):
        load_sam("vit_b", tmp_path / "broken.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable SAM checkpoint"):
        load_sam("vit_b", tmp_path / "junk.pth")


def test_lite0_stride16_equals_timm_features_only():
    import timm

    from vislab.models.backbones import efficientnet_lite0_state_dict

    ours = lite0_stride16(pretrained=True).eval()
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(3,))
    sd = efficientnet_lite0_state_dict()
    ref.load_state_dict({k: v for k, v in sd.items() if k in ref.state_dict()})
    ref.eval()
    assert ref.feature_info.channels() == [112] and ref.feature_info.reduction() == [16]
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x)[0])


@pytest.mark.parametrize("size", [64, 96])
def test_offline_model_any_size_divisible_by_16(size):
    torch.manual_seed(0)
    model = offline_box_sam(size, pretrained=False)
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 5.0, size / 2, size / 2 + 3], [0, 0, size, size], [10, 12, 20, 40]])
    feats = model.encoder(images)
    assert feats.shape == (3, 112, size // 16, size // 16) and not feats.requires_grad
    logits = model.decoder(feats, boxes)
    assert logits.shape == (3, 1, size, size) and torch.isfinite(logits).all()
    assert model.decoder.low_res_logits(feats, boxes).shape == (3, 1, size // 4, size // 4)
    torch.testing.assert_close(model(images, boxes), logits)
    pe = model.decoder.prompt_encoder
    assert pe.image_embedding_size == (size // 16, size // 16) and pe.input_image_size == (size, size)


def test_offline_size_errors():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_offline_sam(100, pretrained=False)
    model = offline_box_sam(64, pretrained=False)
    with pytest.raises(ValueError, match=r"boxes must be Tensor\[B, 4\]"):
        model.decoder(torch.zeros(2, 112, 4, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="one row per box"):
        model.decoder(torch.zeros(3, 112, 4, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"images must be Tensor\[B, 3, H, W\]"):
        model.encoder(torch.zeros(2, 1, 64, 64))


def test_gradients_only_in_neck_and_mask_decoder():
    torch.manual_seed(0)
    model = offline_box_sam(64, pretrained=False)
    model.decoder.train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    logits = model(images, torch.tensor([[5.0, 5, 40, 30], [20, 10, 60, 60]]))
    (logits.sigmoid().mean() + logits.mean()).backward()
    enc = model.encoder.net
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())
    assert all(not p.requires_grad and p.grad is None for p in model.decoder.prompt_encoder.parameters())
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
               for p in model.decoder.neck.parameters())
    dec = dict(model.decoder.mask_decoder.named_parameters())
    with_grad = {k for k, p in dec.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "transformer.layers.0.self_attn.q_proj.weight" in with_grad
    assert "output_hypernetworks_mlps.0.layers.0.weight" in with_grad
    # the multimask outputs are not used for a single box
    assert not any(k.startswith("output_hypernetworks_mlps.1.") for k in with_grad)
    # the frozen backbone keeps its BatchNorm statistics in train mode too
    model.encoder.train()
    assert not any(m.training for m in enc.modules())


def test_batched_decoder_equals_mask_decoder_per_prompt():
    torch.manual_seed(0)
    sam = build_offline_sam(64, pretrained=False)
    pe, dec = sam.prompt_encoder, sam.mask_decoder
    emb = torch.randn(3, 256, 4, 4)
    boxes = torch.tensor([[1.0, 2, 30, 40], [10, 10, 50, 60], [0, 0, 63, 63]])
    sparse, dense = pe(points=None, boxes=boxes, masks=None)
    for multi in (False, True):
        masks, iou_pred = predict_masks_batched(dec, emb, pe.get_dense_pe(), sparse, dense, multimask_output=multi)
        for i in range(3):
            m_ref, i_ref = dec(image_embeddings=emb[i:i + 1], image_pe=pe.get_dense_pe(),
                               sparse_prompt_embeddings=sparse[i:i + 1], dense_prompt_embeddings=dense[i:i + 1],
                               multimask_output=multi)
            torch.testing.assert_close(masks[i:i + 1], m_ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(iou_pred[i:i + 1], i_ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="same B"):
        predict_masks_batched(dec, emb, pe.get_dense_pe(), sparse[:2], dense[:2])


def test_offline_model_equals_sam_predictor():
    """The offline model is a real ``Sam``: SamPredictor on it gives our logits (box convention included)."""
    from segment_anything import SamPredictor

    torch.manual_seed(1)
    model = offline_box_sam(64, pretrained=True)
    sam = model.sam[0].eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    box_sam = np.array([8.0, 12.0, 40.0, 50.0])  # SAM's pixel-index coordinates
    ref, _, _ = predictor.predict(box=box_sam, multimask_output=False, return_logits=True)
    ours = model(torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(box_sam + 0.5).float()[None])
    torch.testing.assert_close(ours[0].detach(), torch.from_numpy(ref).float(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_official_vit_b_split_equals_sam_predictor(vit_b_file):
    """Official path: SAM's ViT at 1024 px, SAM's preprocessing and postprocessing (random weights: one CPU
    forward of ViT-B at 1024 px)."""
    from segment_anything import SamPredictor

    from vislab.models.sam import official_box_sam

    path, _ = vit_b_file
    model = official_box_sam("vit_b", path, image_size=64).eval()
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8))
    feats = model.encoder(image[None])
    assert feats.shape == (1, 256, 64, 64)
    predictor = SamPredictor(model.sam[0])
    predictor.set_torch_image(torch.nn.functional.interpolate(image[None].float(), (1024, 1024), mode="bilinear",
                                                              align_corners=False, antialias=True), (64, 64))
    torch.testing.assert_close(predictor.features, feats)
    box = torch.tensor([[8.0, 12.0, 40.0, 50.0]])
    ref, _, _ = predictor.predict_torch(None, None, boxes=model.decoder.prompt_boxes(box),
                                        multimask_output=False, return_logits=True)
    torch.testing.assert_close(model.decoder(feats, box), ref, rtol=1e-4, atol=1e-4)


def test_fine_features_pack_the_stride4_map_and_start_as_sam():
    """fine=True: the cached tensor holds the stride-16 map then the stride-4 map packed space-to-depth (so it
    unpacks to exactly the backbone's stride-4 output); the projection starts at zero, so the untrained fine
    decoder equals SAM's decoder on the same weights; after a step the fine path has gradients."""
    from vislab.models.sam import LITE0_STRIDE4_LAYERS

    torch.manual_seed(0)
    fine = offline_box_sam(64, encoder_size=128, pretrained=True, fine=True)
    torch.manual_seed(0)
    plain = offline_box_sam(64, encoder_size=128, pretrained=True)
    plain.decoder.load_state_dict({k: v for k, v in fine.decoder.state_dict().items()
                                   if not k.startswith("fine_proj.")})
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 6, 40, 50], [20, 10, 60, 62]])
    feats = fine.encoder(images)
    assert feats.shape == (2, 112 + 16 * 24, 8, 8)
    x = fine.encoder.preprocess(images)
    with torch.no_grad():
        f4 = fine.encoder.net[:LITE0_STRIDE4_LAYERS](x)
    assert f4.shape == (2, 24, 32, 32)  # the grid of the decoder's upscaled embedding (4 x 8)
    torch.testing.assert_close(torch.nn.functional.pixel_shuffle(feats[:, 112:], 4), f4)
    torch.testing.assert_close(feats[:, :112], plain.encoder(images))
    torch.testing.assert_close(fine.decoder(feats, boxes), plain.decoder(feats[:, :112], boxes))
    fine.decoder.train()
    fine.decoder(feats, boxes).mean().backward()
    last = fine.decoder.fine_proj.proj[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    assert "stride-4 features" in fine.describe() and "stride-4" not in plain.describe()
    with pytest.raises(ValueError, match="takes 496 feature channels"):
        fine.decoder(feats[:, :112], boxes)
