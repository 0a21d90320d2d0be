"""Shared report blocks: the side-by-side table, winner sentences (ties are ties), headline values."""

import pytest

from vislab.report.blocks import (
    compare_sentence,
    comparison_bullets,
    curves_figure,
    headline_sentence,
    headline_values,
    image_grid_figure,
    variants_table,
)
from vislab.report.document import Report

RUNS = {
    "vislab": {"params": 1000, "epochs": 3, "test": {"map50": 0.61, "ms": 12.0}, "time": {"fit_s": 5.0,
                                                                                         "step_ms_mean": 40.0}},
    "torchvision": {"params": 1000, "epochs": 3, "test": {"map50": 0.58, "ms": 12.02},
                    "time": {"fit_s": 6.0, "step_ms_mean": 45.0}},
    "box": {"params": 0, "epochs": 0, "test": {"map50": 0.2}},
}


def test_winner_and_ties():
    s = compare_sentence(RUNS, {"map50": True, "ms": False})
    assert "On test AP50 (higher is better) **vislab** wins (vislab 0.61 vs torchvision 0.58, box 0.2)." in s
    # 12.0 vs 12.02 is within 0.5 %: a tie, not a win
    assert "On test ms (lower is better) all variants tie (vislab 12, torchvision 12.02)." in s


def test_partial_tie_and_lower_is_better():
    runs = {"a": {"test": {"err": 1.0}}, "b": {"test": {"err": 1.0004}}, "c": {"test": {"err": 3.0}}}
    (s,) = comparison_bullets(runs, {"err": False})
    assert s == "On test err (lower is better) **a** and **b** tie for best (a 1, b 1.0004; c 3)."


def test_missing_metric_is_skipped_and_headline_says_so():
    assert comparison_bullets(RUNS, {"iou": True}) == []
    assert headline_sentence(RUNS, ("iou", True)) == "No run has a test mIoU."
    assert headline_values({"runs": RUNS}, ("map50", True)) == {"vislab": 0.61, "torchvision": 0.58, "box": 0.2}


def test_variants_table_rows():
    rep = variants_table(Report("t"), RUNS, ["map50", "iou"], extra={"kind": lambda r: "net" if r["params"] else "-"})
    header, rows, _ = rep.blocks[0].data
    assert header == ["variant", "params", "epochs", "test AP50", "test mIoU", "kind", "fit s", "ms/step"]
    assert rows[0] == ["vislab", "1,000", "3", "0.61", "—", "net", "5", "40"]
    assert rows[2][-2:] == ["—", "—"]
    with pytest.raises(ValueError, match="at least one run"):
        variants_table(Report("t"), {}, ["map50"])


def test_curves_and_grid_write_pngs(tmp_path):
    import numpy as np

    rows = [{"variant": "a", "stage": "train", "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in (1, 2)]
    rep = Report("t")
    curves_figure(rep, rows, ["loss", "nothing"], tmp_path / "c.png")
    image_grid_figure(rep, [np.zeros((8, 8, 3))] * 2, tmp_path / "g.png", titles=["x", "y"], caption="grid")
    assert [b.kind for b in rep.blocks] == ["figure", "figure"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "g.png").exists()


def test_jpeg_figures_are_embedded_as_jpeg(tmp_path):
    """A figure saved to a .jpg path is a JPEG (large photo grids), and the HTML report says so in its data URI."""
    import numpy as np

    rep = Report("t")
    image_grid_figure(rep, [np.random.default_rng(0).random((32, 32, 3))] * 2, tmp_path / "g.jpg", caption="grid")
    image_grid_figure(rep, [np.zeros((8, 8, 3))] * 2, tmp_path / "g.png", caption="grid")
    assert (tmp_path / "g.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    html = rep.to_html()
    assert html.count("data:image/jpeg;base64,") == 1 and html.count("data:image/png;base64,") == 1
