"""SamDecoderTask's prompts (box, points, mixed with error-click rounds) on real decoder features, and
evaluate_prompts on predictors whose answers are known."""

import numpy as np
import pytest
import torch

from vislab.data.sam_prompts import deepest_point
from vislab.engine.tasks.sam_decoder import SamDecoderTask, evaluate_prompts


@pytest.fixture(scope="module")
def batch():
    from vislab.models.sam import offline_box_sam

    torch.manual_seed(0)
    model = offline_box_sam(64, encoder_size=64, pretrained=False, fine=False)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        feats = model.encoder(images)
    masks = torch.zeros(4, 1, 64, 64)
    for i, (r, c, s) in enumerate(((10, 10, 20), (30, 5, 12), (5, 40, 18), (40, 40, 16))):
        masks[i, 0, r:r + s, c:c + s] = 1
    boxes = torch.tensor([[c, r, c + s, r + s] for r, c, s in ((10, 10, 20), (30, 5, 12), (5, 40, 18), (40, 40, 16))],
                         dtype=torch.float32)
    return model, feats, boxes, masks, torch.arange(4)


@pytest.mark.parametrize("prompts", ["points", "mixed"])
def test_sampled_prompts_train_the_decoder_and_repeat_with_the_seed(batch, prompts):
    model, feats, boxes, masks, ids = batch
    task = SamDecoderTask(model.decoder, prompts=prompts, seed=3, jitter=2.0)
    task.train()
    outs = []
    for _ in range(2):
        torch.manual_seed(123)  # the prompts come from their own generator, not the global one
        logits = task.sampled_logits(feats, boxes, masks, ids)
        assert logits.shape == (4, 1, 64, 64) and torch.isfinite(logits).all()
        outs.append(logits.detach())
    assert torch.equal(outs[0], outs[1])  # same (seed, epoch, ids): same prompts
    loss, scores, _ = task.compute_loss((feats, boxes, masks, ids))
    loss.backward()
    grads = [p.grad for p in model.decoder.mask_decoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert scores.shape == (4, 2)
    model.decoder.zero_grad(set_to_none=True)


def test_mixed_draws_every_kind_over_batches(batch):
    """Over many batches 'mixed' draws boxes, points and error-click rounds (SAM's iterative training)."""
    from vislab.models.sam_clicks import sample_prompts

    _, _, _, masks, _ = batch
    kinds = set()
    for k in range(30):
        gen = torch.Generator().manual_seed(k)
        kinds.add(sample_prompts(masks[:, 0] > 0.5, "mixed", generator=gen).kind)
    assert kinds == {"box", "points", "clicks"}


@pytest.mark.parametrize("rounds", [(0, 0), (2, 2), (5, 5)])
def test_click_rounds_set_how_many_error_clicks_come_before_the_loss(batch, rounds, monkeypatch):
    """A click batch decodes once per round without gradients, then once for the loss, with 1 + rounds points
    (padding points, label -1, where a prediction is already exact)."""
    import vislab.models.sam_clicks as clicks

    model, feats, boxes, masks, ids = batch
    real = clicks.sample_prompts
    monkeypatch.setattr(clicks, "sample_prompts", lambda m, kind, **kw: real(m, kind, **{**kw, "p_kinds": (0, 0, 1),
                                                                                         "box_first": 0.0}))
    task = SamDecoderTask(model.decoder, prompts="mixed", click_rounds=rounds).train()
    seen = []
    decode = model.decoder.decode
    monkeypatch.setattr(model.decoder, "decode",
                        lambda *a, **kw: seen.append(kw["points"].shape[1]) or decode(*a, **kw))
    preds = task.supervised_logits(feats, boxes, masks, ids)
    assert seen == list(range(1, rounds[0] + 2))
    # the loss sees every round's prediction (SAM), each with gradients
    assert len(preds) == rounds[0] + 1 and all(p.requires_grad for p in preds)
    with pytest.raises(ValueError, match="click_rounds must be"):
        SamDecoderTask(model.decoder, prompts="mixed", click_rounds=(3, 1))


def test_click_rounds_can_start_from_the_box(batch, monkeypatch):
    """SAM's first prompt is a box or a point with equal probability: box-first rounds keep the (jittered) box in
    every round and add the error clicks to it; the loss sees the box alone and every round after it."""
    import vislab.models.sam_clicks as clicks

    model, feats, boxes, masks, ids = batch
    real = clicks.sample_prompts
    monkeypatch.setattr(clicks, "sample_prompts", lambda m, kind, **kw: real(m, kind, **{**kw, "p_kinds": (0, 0, 1),
                                                                                         "box_first": 1.0}))
    task = SamDecoderTask(model.decoder, prompts="mixed", click_rounds=(3, 3)).train()
    seen = []
    decode = model.decoder.decode

    def spy(features, boxes=None, **kw):
        seen.append((boxes is not None, None if kw.get("points") is None else kw["points"].shape[1]))
        return decode(features, boxes, **kw)

    monkeypatch.setattr(model.decoder, "decode", spy)
    preds = task.supervised_logits(feats, boxes, masks, ids)
    assert seen == [(True, None), (True, 1), (True, 2), (True, 3)]
    with torch.no_grad():  # jitter 0: the first prediction is the tight box's alone
        torch.testing.assert_close(preds[0], model.decoder(feats, boxes), atol=1e-5, rtol=1e-5)
    loss, _, _ = task.compute_loss((feats, boxes, masks, ids))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.mask_decoder.parameters())
    model.decoder.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="box_first must be"):
        real(masks[:, 0] > 0.5, "mixed", p_kinds=(0, 0, 1), box_first=1.5)


def test_click_batches_use_both_error_click_rules(batch, monkeypatch):
    """Half the click batches click uniformly in the error region (SAM), half at the centre of the largest
    error (RITM, the evaluation protocol); the rule is drawn with the prompts, so it repeats with the seed."""
    import vislab.models.sam_clicks as clicks

    model, feats, boxes, masks, ids = batch
    real_sample, real_add = clicks.sample_prompts, clicks.add_error_clicks
    monkeypatch.setattr(clicks, "sample_prompts", lambda m, kind, **kw: real_sample(
        m, kind, **{**kw, "p_kinds": (0, 0, 1), "click_rounds": (1, 1)}))
    modes = []
    monkeypatch.setattr(clicks, "add_error_clicks", lambda *a, mode, **kw: modes.append(mode) or real_add(
        *a, mode=mode, **kw))
    task = SamDecoderTask(model.decoder, prompts="mixed", seed=0).train()
    with torch.no_grad():
        for k in range(12):
            task.supervised_logits(feats, boxes, masks, ids + 4 * k)
    assert set(modes) == {"center", "random"}
    again = []
    monkeypatch.setattr(clicks, "add_error_clicks", lambda *a, mode, **kw: again.append(mode) or real_add(
        *a, mode=mode, **kw))
    with torch.no_grad():
        for k in range(12):
            task.supervised_logits(feats, boxes, masks, ids + 4 * k)
    assert again == modes


def test_eval_prompt_point_uses_the_deepest_pixel(batch):
    model, feats, boxes, masks, ids = batch
    task = SamDecoderTask(model.decoder, prompts="points").eval()
    assert task.eval_prompt == "point"
    with torch.no_grad():
        loss, out, _ = task.compute_loss((feats, boxes, masks, ids))
        pts = torch.stack([deepest_point(m[0] > 0.5) for m in masks])[:, None]
        direct = model.decoder(feats, points=pts, point_labels=torch.ones(4, 1, dtype=torch.long))
    assert torch.allclose(task.point_logits(feats, masks), direct)
    assert deepest_point(masks[0, 0] > 0.5).tolist() == [19.5, 19.5]  # a 20 px square at (10, 10): its centre
    both = SamDecoderTask(model.decoder, prompts="mixed").eval()
    with torch.no_grad():
        assert both.eval_prompt == "both" and torch.isfinite(both.compute_loss((feats, boxes, masks, ids))[0])
    with pytest.raises(ValueError, match="prompts must be one of box, points, mixed"):
        SamDecoderTask(model.decoder, prompts="clicks")


class _Oracle:
    """Answers every prompt with the ground truth of the object on the set image (image k is filled with k)."""

    def __init__(self, masks):
        self.masks, self.i = masks, None

    def set_image(self, image):
        self.i = int(image[0, 0, 0])

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=False):
        return self.masks[self.i].numpy()[None], np.array([1.0]), np.zeros((1, 16, 16), np.float32)


def test_evaluate_prompts_on_an_oracle_and_an_empty_predictor():
    masks = [torch.zeros(32, 32, dtype=torch.bool) for _ in range(2)]
    masks[0][4:20, 4:20] = True
    masks[1][10:30, 12:18] = True
    images = [torch.zeros(3, 32, 32, dtype=torch.uint8), torch.ones(3, 32, 32, dtype=torch.uint8)]
    boxes = torch.tensor([[4.0, 4, 20, 20], [12.0, 10, 18, 30]])

    class Empty(_Oracle):
        def predict(self, **kw):
            return np.zeros((1, 32, 32), bool), np.array([0.0]), np.zeros((1, 16, 16), np.float32)

    ev = evaluate_prompts({"oracle": _Oracle(masks), "empty": Empty(masks)}, images, masks, boxes, n_clicks=3,
                          clicks_only=("empty",))
    o, e = ev["summary"]["oracle"], ev["summary"]["empty"]
    assert all(m == {"iou": 1.0, "dice": 1.0, "nsd": 1.0, "boundary_iou": 1.0} for m in o["table"].values())
    assert o["clicks"]["noc@85"] == 1 and o["box_clicks"]["noc@90"] == 0 and o["clicks"]["nof@90"] == 0
    assert e["table"]["box"]["iou"] == 0 and e["clicks"]["noc@85"] == 3 and e["clicks"]["nof@85"] == 2
    assert e["box_clicks"] is None and ev["curves"]["empty"][1] is None
    with pytest.raises(ValueError, match="must pair up"):
        evaluate_prompts({"oracle": _Oracle(masks)}, images, masks[:1], boxes)


def test_clicks_row_from_the_click_runs_equals_prompt_table(batch):
    """The "N clicks" row is taken from the click evaluation's masks instead of simulating the clicks again:
    the same numbers as prompt_table's own "N clicks" on a real (random-weights) SAM decoder."""
    from vislab.models.sam_clicks import prompt_table

    model, _, boxes, masks, _ = batch
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    gts = [m[0] > 0.5 for m in masks[:3]]
    images = [image] * 3  # one image, three objects: encoded once
    ev = evaluate_prompts({"sam": model.eval()}, images, gts, boxes[:3], kinds=("box", "2 clicks"), n_clicks=3)
    ref = prompt_table(model, images, gts, prompt_kinds=("box", "2 clicks"), boxes=boxes[:3].double().numpy())
    for kind in ("box", "2 clicks"):
        for k, v in ref["mean"][kind].items():
            assert ev["summary"]["sam"]["table"][kind][k] == pytest.approx(v, abs=1e-6), (kind, k)
    assert ev["curves"]["sam"][0].runs[0].masks == []  # masks dropped unless kept for a figure


@pytest.mark.parametrize("prompts", ["box", "mixed"])
def test_iou_head_trains_alone_and_leaves_the_masks_exactly_as_they_were(batch, prompts):
    """SAM's IoU-head loss (MSE of the predicted IoU against the thresholded mask's real IoU) with the IoU token
    detached: three optimiser steps with iou_weight 1 and 0 give bit-equal mask decoders and prompt encoders except
    the IoU head, which moved and only with the loss on; evaluation outputs carry the predicted IoU."""
    import copy

    base, feats, boxes, masks, _ = batch
    states = {}
    for w in (1.0, 0.0):
        dec = copy.deepcopy(base.decoder)
        dec.prompt_encoder.requires_grad_(True)
        task = SamDecoderTask(dec, prompts=prompts, seed=1, iou_weight=w)
        task.train()
        opt = torch.optim.AdamW([p for p in dec.parameters() if p.requires_grad], lr=1e-2)
        for step in range(3):
            loss, scores, _ = task.compute_loss((feats, boxes, masks, torch.arange(4) + 4 * step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        states[w] = {k: v.clone() for k, v in dec.state_dict().items()}
        task.eval()
        with torch.no_grad():
            _, out, _ = task.compute_loss((feats, boxes, masks, torch.arange(4)))
        assert out.shape == (4, 3)  # IoU, Dice, predicted IoU
    head = [k for k in states[1.0] if ".iou_prediction_head." in k]
    assert head and all(not torch.equal(states[1.0][k], base.decoder.state_dict()[k]) for k in head if "weight" in k)
    assert all(torch.equal(states[0.0][k], base.decoder.state_dict()[k]) for k in head)
    for k, v in states[1.0].items():
        if k not in head:
            assert torch.equal(v, states[0.0][k]), k
    with pytest.raises(ValueError, match="iou_weight"):
        SamDecoderTask(base.decoder, iou_weight=-1.0)


def test_iou_head_learns_to_score_masks(batch):
    """The task's loss, stepping only the IoU head: its prediction comes close to each mask's real IoU."""
    import copy

    model, feats, boxes, masks, ids = batch
    dec = copy.deepcopy(model.decoder)
    task = SamDecoderTask(dec, prompts="box")
    task.eval()
    with torch.no_grad():
        _, before, _ = task.compute_loss((feats, boxes, masks, ids))
    opt = torch.optim.Adam(dec.mask_decoder.iou_prediction_head.parameters(), lr=1e-3)
    task.train()
    for _ in range(150):
        loss, _, _ = task.compute_loss((feats, boxes, masks, ids))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    task.eval()
    with torch.no_grad():
        _, after, _ = task.compute_loss((feats, boxes, masks, ids))
    assert torch.equal(after[:, :2], before[:, :2])  # the masks did not change
    assert (after[:, 2] - after[:, 0]).abs().max() < 0.05 < (before[:, 2] - before[:, 0]).abs().max()


def test_neighbour_negatives_come_from_the_items_own_view(batch, monkeypatch):
    """TrainPrompts.others gives, per item, the other objects of the view its mask came from (views of one image
    are flipped copies: a wrong view would put them elsewhere); the task passes them to the sampler."""
    from vislab.data.sam_prompts import PromptViews, TrainPrompts
    from vislab.models import sam_clicks as clicks

    model, feats, boxes, masks, ids = batch
    inst = torch.zeros(2, 64, 64, dtype=torch.uint8)
    inst[0, 10:30, 10:30], inst[0, 10:30, 32:40] = 1, 2
    inst[1] = inst[0].flip(-1)  # view 1: the flipped copy
    pv = PromptViews(features=torch.zeros(2, *feats.shape[1:], dtype=torch.float16), instances=inst,
                     boxes=torch.zeros(2, 2, 4), views=[[0, 1]], objects=[(0, 1), (0, 2)], kinds=["a", "b"],
                     stems=["x"])
    train = TrainPrompts(pv, jitter=0.0, seed=5, image_size=64)
    seen_views = set()
    for epoch in range(8):
        train.set_epoch(epoch)
        others = train.others(torch.tensor([0, 1]))
        for j in range(2):
            mask = train[j][2][0] > 0.5
            assert not (mask & others[j]).any()
            v = 0 if torch.equal(mask | others[j], inst[0] > 0) else 1
            assert torch.equal(mask | others[j], inst[v] > 0)
            seen_views.add(v)
    assert seen_views == {0, 1}
    got = {}
    real = clicks.sample_prompts
    monkeypatch.setattr(clicks, "sample_prompts", lambda m, kind, **kw: got.update(kw) or real(m, kind, **kw))
    task = SamDecoderTask(model.decoder, prompts="points", seed=1, train_set=train, neg_others=0.5)
    task.train()
    task.sampled_logits(feats[:2], boxes[:2], torch.stack([train[0][2], train[1][2]]), torch.tensor([0, 1]))
    assert got["neg_others"] == 0.5 and torch.equal(got["others"], train.others(torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="neg_others"):
        SamDecoderTask(model.decoder, neg_others=-0.1)
