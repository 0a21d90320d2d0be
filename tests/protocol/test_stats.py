"""The statistics against scipy.stats, and verdicts on constructed cases whose answer is known."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from vislab.protocol import stats
from vislab.protocol.claims import Claim, judge


@pytest.mark.parametrize("values", [[0.81, 0.84, 0.79], [1.0, 2.0], [0.5, 0.52, 0.49, 0.55, 0.51, 0.47]])
def test_t_interval_equals_scipy(values):
    x = np.asarray(values)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert stats.t_interval(values) == pytest.approx((lo, hi), rel=1e-12)
    s = stats.summarize(values)
    assert s["mean"] == pytest.approx(x.mean()) and s["std"] == pytest.approx(x.std(ddof=1))
    assert s["per_seed"] == list(values)


def test_paired_difference_is_the_paired_t_interval():
    a, b = [0.80, 0.85, 0.83, 0.90], [0.78, 0.80, 0.84, 0.86]
    d = np.subtract(a, b)
    res = sps.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    out = stats.paired_difference(a, b)
    assert out["mean"] == pytest.approx(d.mean()) and out["ci95"] == pytest.approx([ci.low, ci.high])


def test_one_value_has_no_interval_and_non_finite_values_are_left_out():
    assert stats.summarize([0.7]) == {"mean": 0.7, "std": None, "ci95": None, "per_seed": [0.7]}
    s = stats.summarize([0.7, float("nan"), 0.9])
    assert s["per_seed"] == [0.7, None, 0.9] and s["mean"] == pytest.approx(0.8)


@pytest.mark.parametrize("ci, kind, higher, tol, expected", [
    ((0.01, 0.05), "beats", True, 0, "holds"), ((-0.01, 0.05), "beats", True, 0, "not shown"),
    ((-0.05, -0.01), "beats", True, 0, "fails"), ((-0.05, -0.01), "beats", False, 0, "holds"),
    ((-0.004, 0.006), "equals", True, 0.01, "holds"), ((-0.004, 0.016), "equals", True, 0.01, "not shown"),
    ((0.02, 0.03), "equals", True, 0.01, "fails"), (None, "beats", True, 0, "not shown"),
])
def test_verdicts(ci, kind, higher, tol, expected):
    assert stats.verdict(ci, kind=kind, higher=higher, tol=tol) == expected


def test_bootstrap_of_a_clear_win_holds_and_of_a_coin_flip_is_not_shown():
    rng = np.random.default_rng(0)
    good, bad = (rng.random(400) < 0.9).astype(float), (rng.random(400) < 0.6).astype(float)
    win = stats.bootstrap_difference(good, bad)
    assert win["ci95"][0] > 0 and stats.verdict(win["ci95"], kind="beats") == "holds"
    same = stats.bootstrap_difference(good, good[::-1].copy())
    assert same["ci95"][0] < 0 < same["ci95"][1]


def _rows(a, b, metric="accuracy"):
    return {"A": {"test": {metric: stats.summarize(a)}}, "B": {"test": {metric: stats.summarize(b)}}}


def test_claims_over_seeds_and_with_one_seed():
    seeds = [0, 1, 2]
    held = judge(Claim("A", "B", "accuracy"), _rows([0.9, 0.91, 0.92], [0.8, 0.82, 0.81]), {}, seeds)
    assert held["verdict"] == "holds" and held["n_seeds"] == 3 and "paired over 3 seeds" in held["note"]
    failed = judge(Claim("A", "B", "loss"), _rows([0.9, 0.91, 0.92], [0.8, 0.82, 0.81], "loss"), {}, seeds)
    assert failed["verdict"] == "fails" and failed["higher_is_better"] is False
    equal = judge(Claim("A", "B", "accuracy", kind="equals", tol=0.05), _rows([0.9, 0.91, 0.9], [0.9, 0.9, 0.91]),
                  {}, seeds)
    assert equal["verdict"] == "holds"
    one = judge(Claim("A", "B", "accuracy"), _rows([0.9], [0.6]),
                {"A": {0: {"accuracy": np.r_[np.ones(90), np.zeros(10)]}},
                 "B": {0: {"accuracy": np.r_[np.ones(60), np.zeros(40)]}}}, [0])
    assert one["verdict"] == "holds" and "training variance was not measured" in one["note"]
    none = judge(Claim("A", "B", "accuracy"), _rows([0.9], [0.6]), {}, [0])
    assert none["verdict"] == "not shown" and none["diff"]["ci95"] is None
    missing = judge(Claim("A", "C", "accuracy"), _rows([0.9], [0.6]), {}, [0])
    assert missing["verdict"] == "not shown" and "C has no test accuracy" in missing["note"]


def test_an_equality_claim_needs_a_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        Claim("A", "B", "map50", kind="equals")
    assert math.isclose(Claim("A", "B", "map50", kind="equals", tol=0.01).tol, 0.01)
