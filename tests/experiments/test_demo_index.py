"""The demo index shows each experiment's headline metric per variant and its time against its budget."""

import json

from vislab.experiments.demo import _headline, _write_index


def test_index_shows_the_headline_metric(tmp_path):
    summary = {"runs": {"regular": {"test": {"accuracy": 0.086, "map": 0.61}},
                        "deform-all": {"test": {"accuracy": 0.1, "map": 0.7}}}}
    assert _headline(summary, ("map", True)) == ("test mAP (higher is better): regular 0.610, deform-all 0.700")
    _write_index(tmp_path, [("deform-vs-conv", summary, 100.0)], 100.0, quick=False)
    page = (tmp_path / "index.html").read_text()
    assert "regular 0.610" in page and "0.086" not in page
    demo = json.loads((tmp_path / "demo.json").read_text())
    entry = demo["experiments"]["deform-vs-conv"]
    assert entry["headline"] == {"metric": "map", "higher_is_better": True,
                                 "values": {"regular": 0.61, "deform-all": 0.7}}
    assert entry["budget_s"] > 0


def test_lower_is_better_and_missing_metric():
    summary = {"runs": {"net": {"test": {"translation_error_median": 0.8}}, "phase": {"test": {}}}}
    assert _headline(summary, ("translation_error_median", False)) == (
        "test translation error median (lower is better): net 0.800")
    assert _headline({"runs": {}}, ("iou", True)) == "no test mIoU"


def test_the_demo_budgets_fit_the_twelve_minutes():
    """Every registered experiment is in the demo with its own budget; together they leave room for the
    demo's own work inside 12 minutes (the measured times are in the README)."""
    from vislab.experiments import get_experiment, list_experiments

    budgets = {name: get_experiment(name).demo_budget_s for name, _ in list_experiments()}
    assert budgets and all(b > 0 for b in budgets.values()), budgets
    assert sum(budgets.values()) <= 12 * 60 - 30, budgets
