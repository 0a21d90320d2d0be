"""vislab.models.sam_clicks: where the simulated clicks go on constructed masks, the protocol on a fake predictor
with known behaviour (mask prompts chained, box + clicks, multimask choice), NoC/NoF, the prompt table, the
training prompt sampler (its tensors go through SAM's decoder), the figures."""

import numpy as np
import pytest
import torch

from vislab.models.sam_clicks import (
    add_error_clicks,
    evaluate_clicks,
    first_click,
    next_click,
    noc,
    parse_prompt_kind,
    plot_click_sequences,
    plot_iou_vs_clicks,
    prompt_points,
    prompt_table,
    sample_prompts,
    simulate_clicks,
)


def _rect(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


class DiskPredictor:
    """Known behaviour: the mask is the box (pixels whose centres lie inside it, if given), plus a disk of
    ``radius`` around each positive point, minus one around each negative point. The low-res logits carry the
    call number, so a test sees which mask prompt came back. ``multimask_output``: three masks, the real one
    second with the highest predicted IoU."""

    def __init__(self, radius=6.0, size=(40, 60)):
        self.radius, self.size = radius, size
        self.calls, self.images_set, self.mask_inputs = 0, 0, []

    def set_image(self, image):
        self.images_set += 1
        self.size = tuple(image.shape[1:]) if isinstance(image, torch.Tensor) else np.asarray(image).shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=False):
        h, w = self.size
        yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres, continuous
        m = np.zeros((h, w), bool)
        if box is not None:
            x0, y0, x1, y1 = box
            m |= (xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)
        if point_coords is not None:
            for (x, y), lab in zip(point_coords, point_labels):
                disk = (xx - x) ** 2 + (yy - y) ** 2 <= self.radius ** 2
                m = (m | disk) if lab == 1 else (m & ~disk)
        self.calls += 1
        self.mask_inputs.append(None if mask_input is None else float(mask_input[0, 0, 0]))
        low = np.full((1, 4, 4), float(self.calls))
        if multimask_output:
            return np.stack([np.zeros_like(m), m, np.zeros_like(m)]), np.array([0.1, 0.9, 0.3]), np.repeat(low, 3, 0)
        return m[None], np.array([0.5]), low


def test_first_click_is_the_deepest_pixel():
    g = _rect(40, 50, 10, 30, 5, 45)  # 20 rows x 40 columns
    assert first_click(g) == (19, 14)  # distance 10 to both the top edge and the left edge; first in raster order
    # the image border counts as boundary: a mask filling the left columns is clicked away from the border
    assert first_click(_rect(20, 20, 0, 20, 0, 6)) == (2, 2)
    ring = np.zeros((41, 41), bool)
    yy, xx = np.mgrid[0:41, 0:41]
    rr = np.hypot(yy - 20, xx - 20)
    ring[(rr >= 8) & (rr <= 16)] = True
    r, c = first_click(ring)
    assert ring[r, c] and 10 <= np.hypot(r - 20, c - 20) <= 14  # inside the ring's body, not the hole
    with pytest.raises(ValueError, match="gt is empty"):
        first_click(np.zeros((5, 5), bool))


def test_next_click_goes_to_the_largest_error():
    g = _rect(40, 40, 5, 35, 5, 35)
    pred = g.copy()
    pred[5:35, 20:35] = False  # a 30 x 15 false negative
    pred[0:3, 0:3] = True  # a small false positive
    r, c, pos = next_click(g, pred)
    assert pos and pred[r, c] == 0 and g[r, c] and 26 <= c <= 28 and 12 <= r <= 27
    # a large false positive and a thin false negative: a negative click in the false positive
    pred2 = g.copy()
    pred2[36:40, :] = True  # 4-px band of false positive below the object... thinner than:
    pred2[10:30, 0:5] = True  # ...a 20 x 5 false positive left of it (touching the border)
    pred2[5:35, 34] = False  # a 1-px false negative
    r, c, pos = next_click(g, pred2)
    assert not pos and not g[r, c] and pred2[r, c]
    assert next_click(g, g) is None
    clicked = np.zeros_like(g)
    clicked[r, c] = True
    r2, c2, _ = next_click(g, pred2, clicked)
    assert (r2, c2) != (r, c)
    # "area": the error region with most pixels wins even when it is shallower
    g3 = np.zeros((40, 40), bool)
    pred3 = g3.copy()
    pred3[0:2, 0:40] = True  # 80 px false positive, depth 1
    g3[20:28, 20:28] = True  # 64 px false negative, depth 4
    assert next_click(g3, pred3)[2] is True
    assert next_click(g3, pred3, criterion="area")[2] is False
    with pytest.raises(ValueError, match="criterion"):
        next_click(g3, pred3, criterion="size")


def test_noc_counts_the_cap_when_never_reached():
    assert noc([0.5, 0.86, 0.95], 0.85) == (2, True)
    assert noc([0.5, 0.86, 0.95], 0.90) == (3, True)
    assert noc([0.5, 0.86, 0.95], 0.99) == (3, False)
    assert noc([0.9, 0.95], 0.85, start=0) == (0, True)  # a box alone reaching it
    with pytest.raises(ValueError, match="non-empty"):
        noc([], 0.85)


def test_protocol_on_a_fake_predictor():
    """Two squares; a disk predictor of radius 6: click 1 in the bigger square's centre, click 2 (positive) in
    the other square (IoU rises); the mask prompt of round k is round k-1's logits; IoU and Dice are the
    final mask's."""
    g = _rect(40, 60, 5, 19, 5, 19) | _rect(40, 60, 25, 35, 40, 50)
    fake = DiskPredictor(radius=6)
    fake.set_image(np.zeros((40, 60, 3), np.uint8))
    run = simulate_clicks(fake, g, n_clicks=5, keep_masks=True)
    assert run.start == 1 and len(run.ious) == 5 and len(run.masks) == 5
    (x1, y1, l1), (x2, y2, l2) = run.clicks[:2]
    assert (l1, l2) == (1, 1)
    assert 5 <= x1 - 0.5 < 19 and 5 <= y1 - 0.5 < 19  # in the big square
    assert 40 <= x2 - 0.5 < 50 and 25 <= y2 - 0.5 < 35  # in the small one
    assert fake.mask_inputs == [None, 1.0, 2.0, 3.0, 4.0]
    assert run.ious[1] > run.ious[0]
    inter = (run.masks[-1] & g).sum()
    assert run.ious[-1] == pytest.approx(inter / (run.masks[-1] | g).sum())
    assert run.dices[-1] == pytest.approx(2 * inter / (run.masks[-1].sum() + g.sum()))


def test_box_plus_clicks_and_multimask_first():
    g = _rect(40, 60, 10, 30, 10, 30)
    g[10:20, 10:20] = False  # an L: the tight box over-covers the missing quarter
    fake = DiskPredictor(radius=4)
    run = simulate_clicks(fake, g, n_clicks=2, box=True)
    assert run.start == 0 and len(run.ious) == 3
    np.testing.assert_array_equal(run.box, [10, 10, 30, 30])
    assert run.ious[0] == pytest.approx(300 / 400)  # the filled box
    assert run.clicks[0][2] == 0  # the first click removes the false positive quarter
    assert 10 <= run.clicks[0][0] - 0.5 < 20 and run.ious[1] > run.ious[0]
    # multimask on the first round: the mask with the highest predicted IoU (the fake's second) is kept
    fake = DiskPredictor(radius=4)
    first = simulate_clicks(fake, g, n_clicks=1, multimask_first=True)
    assert first.ious[0] > 0
    # an exact prediction stops the clicking and carries the score over
    exact = simulate_clicks(DiskPredictor(radius=1), _rect(40, 60, 10, 12, 10, 12), n_clicks=4, box=True)
    assert exact.ious.tolist() == [1.0] * 5 and exact.clicks == []


def test_evaluate_clicks_noc_nof_and_one_encoding_per_image():
    img_a, img_b = torch.zeros(3, 40, 60, dtype=torch.uint8), torch.zeros(3, 40, 60, dtype=torch.uint8)
    easy = _rect(40, 60, 10, 18, 10, 18)  # 8 x 8: one disk of radius 6 covers it, with spill
    big = _rect(40, 60, 5, 35, 20, 58)  # 30 x 38: never reached with 3 disks
    fake = DiskPredictor(radius=6)
    ev = evaluate_clicks(fake, [img_a, img_a, img_b], [easy, big, easy], n_clicks=3, thresholds=(0.5, 0.99))
    assert fake.images_set == 2
    assert ev.iou.shape == (3, 3) and ev.start == 1
    per = [noc(r, 0.5) for r in ev.iou]
    assert ev.noc[0.5] == pytest.approx(np.mean([n for n, _ in per]))
    assert ev.nof[0.99] == 3 and ev.noc[0.99] == 3.0
    s = ev.summary()
    assert s["clicks"] == [1, 2, 3] and s["nof@99"] == 3 and s["objects"] == 3
    boxed = evaluate_clicks(DiskPredictor(radius=6), [img_a], [big], n_clicks=2, box=True)
    assert boxed.iou.shape == (1, 3) and boxed.noc[0.85] == 0.0  # the tight box of a rectangle is exact
    with pytest.raises(ValueError, match="pair up"):
        evaluate_clicks(fake, [img_a], [easy, big])
    with pytest.raises(TypeError, match="set_image"):
        evaluate_clicks(object(), [img_a], [easy])


def test_prompt_points_spread_along_a_band_and_kinds_parse():
    band = _rect(20, 80, 8, 14, 2, 78)
    pts = prompt_points(band, 3)
    assert len(pts) == 3 and all(band[r, c] for r, c in pts)
    cols = sorted(c for _, c in pts)
    assert cols[1] - cols[0] > 20 and cols[2] - cols[1] > 20  # the two ends and the middle
    ring = np.zeros((41, 41), bool)
    yy, xx = np.mgrid[0:41, 0:41]
    ring[(np.hypot(yy - 20, xx - 20) >= 8) & (np.hypot(yy - 20, xx - 20) <= 16)] = True
    (r0, c0), (r1, c1) = prompt_points(ring, 2)
    assert ring[r1, c1] and np.hypot(r1 - r0, c1 - c0) > 20  # the far side of the ring
    assert parse_prompt_kind("box") == (True, 0, "")
    assert parse_prompt_kind("1 point") == (False, 1, "points")
    assert parse_prompt_kind("5 clicks") == (False, 5, "clicks")
    assert parse_prompt_kind("box + 2 clicks") == (True, 2, "clicks")
    assert parse_prompt_kind("box + 2 points") == (True, 2, "points")
    for bad in ("", "3 boxes", "box + box", "0 clicks"):
        with pytest.raises(ValueError, match="prompt kind"):
            parse_prompt_kind(bad)


def test_prompt_table_on_the_fake_predictor():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    sq = _rect(40, 60, 10, 30, 10, 30)
    table = prompt_table(DiskPredictor(radius=4), [img, img], [sq, sq], prompt_kinds=("box", "1 point", "3 clicks"))
    assert len(table["rows"]) == 6 and set(table["mean"]) == {"box", "1 point", "3 clicks"}
    box_rows = [r for r in table["rows"] if r["kind"] == "box"]
    assert all(r["iou"] == 1.0 and r["nsd"] == 1.0 and r["boundary_iou"] == 1.0 for r in box_rows)
    one = table["mean"]["1 point"]
    disk = np.pi * 16  # about 50 px of the 400-px square
    assert one["iou"] == pytest.approx(disk / 400, abs=0.02)
    assert table["mean"]["3 clicks"]["iou"] > one["iou"]


def test_sampler_prompts_go_through_the_decoder():
    from vislab.models.sam import offline_box_sam

    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 4:12, 4:20] = True
    masks[1, 20:30, 2:8] = True
    masks[2, 0:32, 10:14] = True
    box = sample_prompts(masks, "box", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(box.boxes, torch.tensor([[4.0, 4, 20, 12], [2, 20, 8, 30], [10, 0, 14, 32]]))
    jit = sample_prompts(masks, "box", generator=torch.Generator().manual_seed(0), max_shift=3)
    assert (jit.boxes[:, :2] <= box.boxes[:, :2]).all() and (jit.boxes[:, 2:] >= box.boxes[:, 2:]).all()
    pts = sample_prompts(masks, "points", generator=torch.Generator().manual_seed(1), max_pos=3, max_neg=2)
    again = sample_prompts(masks, "points", generator=torch.Generator().manual_seed(1), max_pos=3, max_neg=2)
    assert torch.equal(pts.points, again.points) and torch.equal(pts.point_labels, again.point_labels)
    for i in range(3):
        for (x, y), lab in zip(pts.points[i], pts.point_labels[i]):
            if lab == -1:
                continue
            assert bool(masks[i, int(y), int(x)]) == (lab == 1)
            assert x % 1 == 0.5 and y % 1 == 0.5  # pixel centres
        assert (pts.point_labels[i] == 1).sum() >= 1
    kinds = {sample_prompts(masks, "mixed", generator=torch.Generator().manual_seed(s)).kind for s in range(20)}
    assert kinds == {"box", "points", "clicks"}
    model = offline_box_sam(32, pretrained=False)
    feats = model.encoder(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    for prompts in (box, pts):
        low, iou_pred = model.decoder.decode(feats, **prompts.decoder_kwargs())
        assert low.shape == (3, 1, 8, 8) and iou_pred.shape == (3, 1)
    # a click round: the error click joins the points, the previous logits are the mask prompt
    clicks = sample_prompts(masks, "mixed", generator=torch.Generator().manual_seed(
        next(s for s in range(20) if sample_prompts(masks, "mixed", generator=torch.Generator().manual_seed(s)).kind
             == "clicks")))
    assert clicks.click_rounds >= 1 and clicks.points.shape == (3, 1, 2)
    low, _ = model.decoder.decode(feats, **clicks.decoder_kwargs())
    pred = model.decoder.upsample(low)[:, 0] > 0
    more = add_error_clicks(clicks, masks, pred, generator=torch.Generator().manual_seed(0))
    assert more.points.shape == (3, 2, 2) and more.click_rounds == clicks.click_rounds - 1
    low2, _ = model.decoder.decode(feats, **more.decoder_kwargs(), mask_input=low.detach())
    assert low2.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="non-empty"):
        sample_prompts(torch.zeros(1, 8, 8), "box")
    with pytest.raises(ValueError, match="kind must be one of box, points, mixed"):
        sample_prompts(masks, "boxes")


def test_add_error_clicks_by_hand():
    g = torch.zeros(2, 20, 20, dtype=torch.bool)
    g[:, 5:15, 5:15] = True
    pred = g.clone()
    pred[0, 5:15, 10:15] = False  # false negative on the right half
    from vislab.models.sam_clicks import PromptBatch

    out = add_error_clicks(PromptBatch("points", points=torch.zeros(2, 1, 2), point_labels=torch.ones(2, 1).long()),
                           g, pred, mode="center")
    assert out.point_labels[:, 1].tolist() == [1, -1]  # exact prediction: a padding point
    x, y = out.points[0, 1].tolist()
    assert 10 <= x - 0.5 < 15 and 5 <= y - 0.5 < 15
    rnd = add_error_clicks(PromptBatch("box", boxes=torch.zeros(2, 4)), g, pred,
                           generator=torch.Generator().manual_seed(0))
    x, y = rnd.points[0, 0].tolist()
    assert bool(g[0, int(y), int(x)] & ~pred[0, int(y), int(x)]) and rnd.boxes is not None


def test_real_prompter_runs_the_protocol_and_figures(tmp_path):
    from vislab.models.sam import offline_box_sam

    torch.manual_seed(0)
    model = offline_box_sam(32, pretrained=False).eval()
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    g = _rect(32, 32, 8, 24, 6, 20)
    ev = evaluate_clicks(model, [img], [g], n_clicks=3, keep_masks=True)
    assert ev.iou.shape == (1, 3) and np.isfinite(ev.iou).all() and len(ev.runs[0].clicks) <= 3
    boxed = evaluate_clicks(model, [img], [g], n_clicks=2, box=True, multimask_first=True)
    p1 = plot_iou_vs_clicks({"untrained": ev, "box + clicks": boxed}, tmp_path / "curve.png")
    p2 = plot_click_sequences([img], ev.runs, [g], tmp_path / "clicks.png", titles=["square"])
    assert p1.stat().st_size > 1000 and p2.stat().st_size > 1000
    table = prompt_table(model, [img], [g])
    assert set(table["mean"]) == {"box", "1 point", "3 points", "5 clicks"}


def test_negative_points_on_neighbours():
    # object 0 with a neighbour just right of it and one far away: with neg_others=1 every negative point
    # lands on the near neighbour; without others (or neg_others=0) the draw is the one of before
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    others = torch.zeros(2, 40, 40, dtype=torch.bool)
    others[:, 10:20, 21:24] = True  # a neighbour within half the box's size
    others[:, 35:39, 35:39] = True  # far away: never a negative point
    others[1] = False  # the second object has no neighbour: its negatives stay in the ring
    near_any = 0
    for s in range(30):
        gen = torch.Generator().manual_seed(s)
        pts = sample_prompts(masks, "points", generator=gen, others=others, neg_others=1.0)
        base = sample_prompts(masks, "points", generator=torch.Generator().manual_seed(s))
        same = sample_prompts(masks, "points", generator=torch.Generator().manual_seed(s), others=others,
                              neg_others=0.0)
        assert torch.equal(base.points, same.points) and torch.equal(base.point_labels, same.point_labels)
        for i in range(2):
            neg = pts.points[i][pts.point_labels[i] == 0]
            for x, y in neg.tolist():
                if i == 0:
                    assert 21 <= x < 24 and 10 <= y < 20
                    near_any += 1
                else:
                    assert not masks[i, int(y), int(x)] and 9 <= x < 21 and 9 <= y < 21  # the 10 % ring
    assert near_any > 0
    with pytest.raises(ValueError, match="neg_others"):
        sample_prompts(masks, "points", others=others, neg_others=1.5)
    with pytest.raises(ValueError, match="others must be"):
        sample_prompts(masks, "points", others=others[:1], neg_others=0.5)
