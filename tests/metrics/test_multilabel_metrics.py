"""Multi-label metrics against scikit-learn and hand-computed values."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support

from vislab.metrics.multilabel import MultiLabelMeter, average_precision, multilabel_metrics


def _random_case(seed: int, n: int = 60, labels: int = 7):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < rng.uniform(0.1, 0.6, labels)).astype(np.float32)
    y[:, 2] = 0  # a label with no positive
    y[:, 5] = 1  # a label that is always positive
    # informative but noisy logits, rounded so that tied scores occur
    logits = np.round(2.0 * (y - 0.5) + rng.normal(0, 1.5, y.shape), 1).astype(np.float32)
    logits[:, 3] = -5.0  # a label that is never predicted (no predicted positive)
    return logits, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
    logits, y = _random_case(seed)
    out = multilabel_metrics(torch.from_numpy(logits), torch.from_numpy(y))
    pred = (1 / (1 + np.exp(-logits.astype(np.float64))) >= 0.5).astype(int)
    yi = y.astype(int)

    assert out["exact_match"] == pytest.approx(accuracy_score(yi, pred))
    assert out["accuracy"] == out["exact_match"]
    assert out["label_accuracy"] == pytest.approx((pred == yi).mean())
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(yi, pred, average=avg, zero_division=0)
        assert out[f"precision_{avg}"] == pytest.approx(p)
        assert out[f"recall_{avg}"] == pytest.approx(r)
        assert out[f"f1_{avg}"] == pytest.approx(f)
    p, r, f, s = precision_recall_fscore_support(yi, pred, average=None, zero_division=0)
    np.testing.assert_allclose(out["per_label"]["precision"], p)
    np.testing.assert_allclose(out["per_label"]["recall"], r)
    np.testing.assert_allclose(out["per_label"]["f1"], f)
    np.testing.assert_array_equal(out["per_label"]["support"], s)

    ap_ref = [average_precision_score(yi[:, j], logits[:, j]) for j in range(y.shape[1]) if yi[:, j].any()]
    assert out["map"] == pytest.approx(np.mean(ap_ref))
    assert np.isnan(out["per_label"]["ap"][2])
    np.testing.assert_allclose(out["per_label"]["ap"][[0, 1, 3, 4, 5, 6]], ap_ref)
    assert all(type(out[k]) is float for k in out if k != "per_label")


def test_probabilities_numpy_and_threshold():
    logits, y = _random_case(3)
    prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
    out = multilabel_metrics(prob, y, from_logits=False, threshold=0.7)
    pred = (prob >= 0.7).astype(int)
    p, r, f, _ = precision_recall_fscore_support(y.astype(int), pred, average="micro", zero_division=0)
    assert out["f1_micro"] == pytest.approx(f)
    assert out["exact_match"] == pytest.approx(accuracy_score(y.astype(int), pred))


def test_hand_computed():
    # label 0: scores 0.9(+), 0.8(-), 0.7(+), 0.1(-) → AP = 0.5·1 + 0.5·(2/3) = 5/6
    # label 1: never positive → excluded from map
    probs = np.array([[0.9, 0.6], [0.8, 0.2], [0.7, 0.1], [0.1, 0.3]])
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    out = multilabel_metrics(probs, y, from_logits=False)
    assert out["map"] == pytest.approx(5 / 6)
    # predictions at 0.5: [[1,1],[1,0],[1,0],[0,0]]; tp=2, fp=2 (row 1 label 0, row 0 label 1), fn=0
    assert out["precision_micro"] == pytest.approx(2 / 4)
    assert out["recall_micro"] == pytest.approx(1.0)
    assert out["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 2))
    assert out["precision_macro"] == pytest.approx((2 / 3 + 0) / 2)
    assert out["recall_macro"] == pytest.approx((1 + 0) / 2)  # label 1: 0/0 counts as 0
    assert out["exact_match"] == pytest.approx(2 / 4)  # rows 2 and 3 are entirely right
    assert out["label_accuracy"] == pytest.approx(6 / 8)


def test_average_precision_ties_and_no_positive():
    # all scores tied: one threshold, AP = precision at full recall = prevalence
    assert average_precision(np.zeros(5), np.array([1, 0, 0, 1, 0])) == pytest.approx(0.4)
    assert np.isnan(average_precision(np.arange(3.0), np.zeros(3)))


def test_no_positive_anywhere_gives_nan_map():
    out = multilabel_metrics(torch.zeros(3, 2), torch.zeros(3, 2))
    assert np.isnan(out["map"])


def test_meter_equals_one_shot():
    logits, y = _random_case(4)
    meter = MultiLabelMeter()
    for i in range(0, len(y), 16):
        meter.update(torch.from_numpy(logits[i:i + 16]), torch.from_numpy(y[i:i + 16]))
    assert len(meter) == len(y)
    got, ref = meter.compute(), multilabel_metrics(logits, y)
    for k in ("map", "f1_macro", "exact_match"):
        assert got[k] == pytest.approx(ref[k])
    meter.reset()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()


def test_errors():
    with pytest.raises(ValueError, match=r"shape \[N, L\], got shape \(4,\)"):
        multilabel_metrics(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"shape of scores \(4, 2\), got \(4, 3\)"):
        multilabel_metrics(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="multi-hot"):
        multilabel_metrics(np.zeros((2, 2)), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="N = 0"):
        multilabel_metrics(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        multilabel_metrics(np.zeros((2, 2)), np.zeros((2, 2)), threshold=1.5)
    with pytest.raises(ValueError, match="from_logits=False"):
        multilabel_metrics(np.full((2, 2), 3.0), np.zeros((2, 2)), from_logits=False)
    with pytest.raises(ValueError, match="finite"):
        multilabel_metrics(np.full((2, 2), np.nan), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="got list"):
        multilabel_metrics([[0.0]], np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        MultiLabelMeter().update(torch.zeros(2, 3), torch.zeros(2, 2))
