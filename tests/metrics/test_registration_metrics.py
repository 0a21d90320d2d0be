"""Registration metrics (``vislab.metrics.registration``): hand-computed errors, thresholds, per-type split,
the confusion matrix against scikit-learn."""

import math

import numpy as np
import pytest
import torch

from vislab.metrics.registration import (
    METRIC_KEYS,
    confusion_matrix,
    flat_metrics,
    registration_metrics,
    scale_errors,
    translation_errors,
    types_from_estimates,
)


def test_translation_and_scale_errors_by_hand():
    np.testing.assert_allclose(translation_errors([3.0, 0.0], [4.0, -1.0], [0.0, 0.0], [0.0, 1.0]), [5.0, 2.0])
    np.testing.assert_allclose(scale_errors([math.log(1.1), 0.0, math.log(0.9)], [0.0, math.log(1.25), 0.0]),
                               [10.0, 20.0, 10.0])
    # tensors work the same
    np.testing.assert_allclose(translation_errors(torch.tensor([1.0]), torch.tensor([1.0]), [0.0], [0.0]),
                               [math.sqrt(2)])
    with pytest.raises(ValueError, match="one length"):
        translation_errors([1.0], [1.0, 2.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        scale_errors([np.nan], [0.0])


def test_types_from_estimates():
    t = types_from_estimates([0.5, 3.0, 0.0, -2.0], [0.5, 0.0, 0.0, 2.0], [0.0, 0.01, -0.05, 0.2],
                             shift_threshold=1.0, scale_threshold=0.04)
    assert t.tolist() == [0, 1, 2, 3]
    assert types_from_estimates([1.0], [0.0], [0.04], shift_threshold=1.0, scale_threshold=0.04).tolist() == [3]
    with pytest.raises(ValueError, match="thresholds must be > 0"):
        types_from_estimates([0.0], [0.0], [0.0], shift_threshold=0.0, scale_threshold=0.1)


def test_confusion_matrix_matches_sklearn():
    from sklearn.metrics import confusion_matrix as sk

    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    np.testing.assert_array_equal(confusion_matrix(t, p), sk(t, p, labels=[0, 1, 2, 3]))
    assert confusion_matrix([3], [3]).sum() == 1 and confusion_matrix([], []).sum() == 0
    with pytest.raises(ValueError, match=r"indices in \[0, 4\)"):
        confusion_matrix([0, 4], [0, 1])


def test_registration_metrics_overall_and_per_type():
    true = {"dx": [0.0, 4.0, 0.0, -3.0], "dy": [0.0, 0.0, 0.0, 4.0],
            "log_s": [0.0, 0.0, math.log(1.2), math.log(0.8)], "type": [0, 1, 2, 3]}
    pred = {"dx": [0.0, 4.0, 0.3, 0.0], "dy": [0.0, 1.0, 0.4, 0.0],
            "log_s": [0.0, 0.0, math.log(1.2 * 1.05), 0.0]}
    m = registration_metrics(pred, true, shift_threshold=1.0, scale_threshold=0.04)
    te = [0.0, 1.0, 0.5, 5.0]
    se = [0.0, 0.0, 5.0, 25.0]
    assert m["n"] == 4
    assert m["translation_error_mean"] == pytest.approx(np.mean(te))
    assert m["translation_error_median"] == pytest.approx(0.75)
    assert m["translation_error_p90"] == pytest.approx(np.percentile(te, 90))
    assert m["scale_error_mean"] == pytest.approx(np.mean(se), rel=1e-6)
    assert m["scale_error_median"] == pytest.approx(2.5, rel=1e-6)
    assert m["pred_types"].tolist() == [0, 1, 2, 0] and m["type_accuracy"] == 0.75
    assert m["per_type"]["both"]["type_accuracy"] == 0.0 and m["per_type"]["scale"]["scale_error_median"] == \
        pytest.approx(5.0, rel=1e-6)
    assert m["per_type"]["shift"]["n"] == 1 and m["confusion"][3, 0] == 1
    # a method's own types override the thresholds
    own = registration_metrics(pred, true, shift_threshold=1.0, scale_threshold=0.04, pred_types=[0, 1, 2, 3])
    assert own["type_accuracy"] == 1.0 and own["translation_error_mean"] == m["translation_error_mean"]
    flat = flat_metrics(m)
    assert set(flat) == set(METRIC_KEYS) | {f"{k}_{t}" for k in METRIC_KEYS for t in ("none", "shift", "scale",
                                                                                      "both")}
    assert flat["translation_error_mean_both"] == 5.0


def test_empty_type_gives_nan_and_length_errors():
    true = {"dx": [0.0], "dy": [0.0], "log_s": [0.0], "type": [0]}
    m = registration_metrics({"dx": [0.0], "dy": [0.0], "log_s": [0.0]}, true, shift_threshold=1, scale_threshold=1)
    assert m["per_type"]["both"]["n"] == 0 and math.isnan(m["per_type"]["both"]["translation_error_median"])
    with pytest.raises(ValueError, match="true\\['type'\\] must have length 1"):
        registration_metrics({"dx": [0.0], "dy": [0.0], "log_s": [0.0]}, {**true, "type": [0, 1]},
                             shift_threshold=1, scale_threshold=1)
    with pytest.raises(ValueError, match="pred_types must have length 1"):
        registration_metrics({"dx": [0.0], "dy": [0.0], "log_s": [0.0]}, true, shift_threshold=1,
                             scale_threshold=1, pred_types=[0, 0])
