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


# ---------------------------------------------------------------------------------------------
# SamPrompter: every prompt type equals segment-anything's SamPredictor
# ---------------------------------------------------------------------------------------------


def _prompt_cases(h, w, low_res_side, rng):
    """(name, kwargs) for every prompt type on an h x w image; the mask prompt is random logits."""
    mask = rng.normal(0, 3, (1, low_res_side, low_res_side)).astype(np.float32)
    return [
        ("1 positive point", dict(point_coords=np.array([[w * 0.4, h * 0.55]]), point_labels=np.array([1]))),
        ("positive + negative", dict(point_coords=np.array([[w * 0.4, h * 0.5], [3.0, 7.0], [w - 2.0, h - 5.0]]),
                                     point_labels=np.array([1, 0, 0]))),
        ("box", dict(box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9]))),
        ("box + points", dict(box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9]),
                              point_coords=np.array([[w * 0.3, h * 0.5], [w * 0.6, h * 0.3]]),
                              point_labels=np.array([1, 0]))),
        ("points + mask", dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]),
                               mask_input=mask)),
        ("box + mask", dict(box=np.array([2.0, 3.0, w * 0.5, h * 0.6]), mask_input=mask)),
        ("mask only", dict(mask_input=mask)),
    ]


def _assert_same_as_predictor(ours, ref, case):
    for multimask in (False, True):
        m1, i1, l1 = ours.predict(**case, multimask_output=multimask, return_logits=True)
        m2, i2, l2 = ref.predict(**case, multimask_output=multimask, return_logits=True)
        assert m1.shape == m2.shape == ((3 if multimask else 1),) + tuple(ref.original_size)
        np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-5)  # measured: at most 9e-8 (float32 rounding)
        np.testing.assert_allclose(i1, i2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-5)
        b1, _, _ = ours.predict(**case, multimask_output=multimask)
        assert b1.dtype == bool
        # the thresholded masks agree wherever the logit is not within the tolerance of 0
        sure = np.abs(m2) > 1e-3
        np.testing.assert_array_equal(b1[sure], (m2 > 0)[sure])


@pytest.mark.parametrize("name", [c[0] for c in _prompt_cases(8, 8, 4, np.random.default_rng(0))])
def test_prompter_equals_sam_predictor_every_prompt_type(name):
    """Offline Sam at a 64-px input, a 64 x 64 image: set_image on both sides (no resize)."""
    from segment_anything import SamPredictor

    from vislab.models.sam import SamPrompter

    torch.manual_seed(2)
    sam = build_offline_sam(64, pretrained=True).eval()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ours, ref = SamPrompter(sam), SamPredictor(sam)
    ours.set_image(image)
    ref.set_image(image)
    torch.testing.assert_close(ours.model.decoder.neck(ours.features), ref.features)
    case = dict(_prompt_cases(64, 64, ours.low_res_size, rng))[name]
    _assert_same_as_predictor(ours, ref, case)


def test_prompter_equals_sam_predictor_non_square_resized_image():
    """A 48 x 80 image on a 64-px encoder (scale 0.8, padding below): SAM's coordinate scaling, the crop of
    the padding and the resize back; SamPredictor gets the same resized tensor (set_torch_image)."""
    from segment_anything import SamPredictor

    from vislab.models.sam import SamPrompter, _resize_longest

    torch.manual_seed(3)
    sam = build_offline_sam(64, pretrained=True).eval()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    ours, ref = SamPrompter(sam), SamPredictor(sam)
    ours.set_image(image)
    assert ours.input_size == (38, 64) and ours.original_size == (48, 80) and ours.low_res_size == 16
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    ref.set_torch_image(_resize_longest(x, 64), (48, 80))
    for _, case in _prompt_cases(48, 80, 16, rng):
        _assert_same_as_predictor(ours, ref, case)


def test_prompter_pixel_coords_are_the_training_convention():
    """coords="pixel" with a box equals the experiment's model(images, boxes) (fine features, encoder at 2 x the
    image); a pixel-convention point u equals the SAM-convention point u - 0.5 / s; mask prompts chain."""
    from vislab.models.sam import SamPrompter

    torch.manual_seed(4)
    model = offline_box_sam(32, encoder_size=64, pretrained=True, fine=True).eval()
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8))
    pix, sam_c = SamPrompter(model, coords="pixel"), SamPrompter(model, coords="sam")
    pix.set_image(image)
    sam_c.set_image(image)
    box = np.array([3.0, 4.0, 20.0, 27.0])
    logits, _, low = pix.predict(box=box, multimask_output=False, return_logits=True)
    with torch.no_grad():
        ref = model(image[None], torch.from_numpy(box).float()[None])
    torch.testing.assert_close(torch.from_numpy(logits), ref[0], rtol=1e-4, atol=1e-4)
    assert low.shape == (1, 16, 16)
    u = np.array([[10.5, 12.5], [25.5, 3.5]])  # the centres of pixels (row 12, col 10) and (row 3, col 25)
    a = pix.predict(point_coords=u, point_labels=np.array([1, 0]), mask_input=low, return_logits=True)
    b = sam_c.predict(point_coords=u - 0.5 / 2, point_labels=np.array([1, 0]), mask_input=low, return_logits=True)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # the decoder's own point API (training) gives the same single-mask logits
    with torch.no_grad():
        dec = model.decoder(model.encoder(image[None]), points=torch.from_numpy(u).float()[None],
                            point_labels=torch.tensor([[1, 0]]), mask_input=torch.from_numpy(low)[None])
    torch.testing.assert_close(dec[0], torch.from_numpy(pix.predict(
        point_coords=u, point_labels=np.array([1, 0]), mask_input=low, multimask_output=False,
        return_logits=True)[0]), rtol=1e-4, atol=1e-4)


def test_prompter_and_decoder_errors():
    from vislab.models.sam import SamPrompter

    model = offline_box_sam(32, pretrained=False)
    with pytest.raises(ValueError, match="coords must be one of sam, pixel"):
        SamPrompter(model, coords="xy")
    with pytest.raises(TypeError, match="BoxPromptSam or a segment_anything Sam"):
        SamPrompter(torch.nn.Linear(2, 2))
    p = SamPrompter(model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(box=np.array([1, 2, 3, 4]))
    with pytest.raises(TypeError, match=r"uint8\[H, W, 3\]"):
        p.set_image(np.zeros((32, 32, 3), np.float32))
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    p.set_image(rgb)
    feats = p.features
    p.set_image(np.ascontiguousarray(rgb[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(p.features, feats)
    with pytest.raises(ValueError, match="point_labels must be supplied"):
        p.predict(point_coords=np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"mask_input must be \[1, 8, 8\]"):
        p.predict(mask_input=np.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match="at least one prompt"):
        p.predict()
    feats = model.encoder(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="point_labels must be 1"):
        model.decoder.decode(feats, points=torch.zeros(2, 1, 2), point_labels=torch.full((2, 1), 2))
    with pytest.raises(ValueError, match=r"points must be Tensor\[B, N, 2\]"):
        model.decoder.decode(feats, points=torch.zeros(1, 1, 2), point_labels=torch.ones(1, 1))
    # padding points (label -1) let prompts with different numbers of points share a batch
    pts = torch.tensor([[[5.5, 6.5], [20.5, 9.5]], [[12.5, 12.5], [0.0, 0.0]]])
    lab = torch.tensor([[1, 0], [1, -1]])
    low, iou_pred = model.decoder.decode(feats, points=pts, point_labels=lab, multimask_output=True)
    assert low.shape == (2, 3, 8, 8) and iou_pred.shape == (2, 3)
    alone, _ = model.decoder.decode(feats[1:], points=pts[1:, :1], point_labels=lab[1:, :1], multimask_output=True)
    assert not torch.allclose(alone, low[1:])  # a padding point is a token: SAM's own padding, not a no-op


@pytest.mark.slow
def test_official_vit_b_prompter_equals_sam_predictor_every_prompt_type(vit_b_file):
    """Official vit_b (random weights, official file format): one ViT-B forward at 1024 px, then every prompt
    type through SamPrompter and SamPredictor (mask prompts 256 x 256)."""
    from segment_anything import SamPredictor

    from vislab.models.sam import SamPrompter, _resize_longest

    path, _ = vit_b_file
    sam = load_sam("vit_b", path)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ours = SamPrompter(official_box_sam_from(sam))
    ours.set_image(image)
    assert ours.low_res_size == 256 and ours.input_size == (768, 1024)
    ref = SamPredictor(sam)
    ref.features, ref.original_size, ref.input_size, ref.is_image_set = ours.features, (48, 64), (768, 1024), True
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():  # the encoder input SamPredictor.set_torch_image would build
        torch.testing.assert_close(ours.model.encoder.preprocess(x), sam.preprocess(_resize_longest(x, 1024)))
    for _, case in _prompt_cases(48, 64, 256, rng):
        _assert_same_as_predictor(ours, ref, case)


def official_box_sam_from(sam):
    from vislab.models.sam import BoxPromptSam

    return BoxPromptSam(sam, kind="official", image_size=1024)


@pytest.mark.cuda
def test_prompter_on_cuda_equals_cpu():
    """BoxPromptSam.to("cuda") moves the encoder and decoder halves; SamPrompter follows them (numpy out)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from vislab.models.sam import SamPrompter

    torch.manual_seed(0)
    model = offline_box_sam(64, encoder_size=128, pretrained=True, fine=True).eval()
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    case = dict(point_coords=np.array([[20.5, 30.5], [50.5, 10.5]]), point_labels=np.array([1, 0]),
                box=np.array([4.0, 6.0, 50.0, 60.0]))
    cpu = SamPrompter(model, coords="pixel")
    cpu.set_image(image)
    ref = cpu.predict(**case, return_logits=True)
    gpu = SamPrompter(model.to("cuda"), coords="pixel")
    gpu.set_image(image)
    got = gpu.predict(**case, return_logits=True)
    got2 = gpu.predict(**case, mask_input=got[2][:1], return_logits=True)
    assert gpu.features.is_cuda and got2[0].shape == (3, 64, 64)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_point_convention_lands_on_the_dense_grid():
    """vislab's continuous coordinates land exactly where they are in the encoder frame: a point at the centre of
    embedding cell (i, j) (frame position ((j + 0.5) * 16, (i + 0.5) * 16), image position that / s) gets the
    positional encoding of that cell in the decoder's dense grid (get_dense_pe), at s = 2 (32-px image, 64-px
    encoder input); SAM's convention needs x = u - 0.5 / s for the same token."""
    from vislab.models.sam import SamPrompter

    model = offline_box_sam(32, encoder_size=64, pretrained=False).eval()
    pe = model.decoder.prompt_encoder
    dense = pe.get_dense_pe()[0]  # (256, 4, 4)
    i, j = 1, 2
    u = torch.tensor([[[(j + 0.5) * 16 / 2, (i + 0.5) * 16 / 2]]])  # (1, 1, 2) = (20, 12)
    with torch.no_grad():
        sparse, _ = pe(points=(model.decoder.prompt_points(u), torch.ones(1, 1, dtype=torch.int)), boxes=None,
                       masks=None)
        torch.testing.assert_close(sparse[0, 0] - pe.point_embeddings[1].weight[0], dense[:, i, j])
        box = torch.tensor([[(0 + 0.5) * 8, (0 + 0.5) * 8, (3 + 0.5) * 8, (2 + 0.5) * 8]])  # cells (0,0), (2,3)
        sb, _ = pe(points=None, boxes=model.decoder.prompt_boxes(box), masks=None)
        torch.testing.assert_close(sb[0, 0] - pe.point_embeddings[2].weight[0], dense[:, 0, 0])
        torch.testing.assert_close(sb[0, 1] - pe.point_embeddings[3].weight[0], dense[:, 2, 3])
    p = SamPrompter(model, coords="sam")
    p.set_image(np.zeros((32, 32, 3), np.uint8))
    x = u[0] - 0.5 / 2
    torch.testing.assert_close(p.to_input_frame(x) + 0.5, u[0] * 2)  # frame position, as the prompt encoder sees it
