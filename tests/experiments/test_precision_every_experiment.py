"""`--precision bf16-mixed` trains every registered experiment on the CPU (its `--quick` demo settings)."""

import json
import math

import pytest

from vislab.experiments import get_experiment, list_experiments


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, _ in list_experiments()])
def test_every_experiment_trains_in_bf16_mixed_on_the_cpu(name, tmp_path):
    import vislab

    out = tmp_path / "run"
    result = vislab.run(name, out=str(out), logger="none", precision="bf16-mixed",
                        **get_experiment(name).demo_overrides(True))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and json.loads((out / "env.json").read_text())["precision"] == "bf16-mixed"
    key = summary["headline"]["metric"]
    trained = {v: r for v, r in summary["runs"].items() if r["epochs"]}
    assert trained, "no variant trained"
    for v, r in trained.items():
        assert math.isfinite(r["test"][key]["mean"]), (v, r["test"][key])
    assert result.summary["experiment"] == name
