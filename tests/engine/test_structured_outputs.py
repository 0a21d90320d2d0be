"""The engine's structured-output path: per-sample results of any structure, epoch metrics over the
whole split, the same numbers under DDP (gloo, 2 processes) as in one process, padding duplicates of an
odd-sized split not counted, and ``evaluate`` giving what validation gave."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vislab.engine.module import StructuredTaskModule, dedupe_by_id, evaluate

TOY = Path(__file__).with_name("_ddp_toy.py")


def _run_toy(out: Path, devices: int) -> dict:
    env = {**os.environ, "VISLAB_PROGRESS": "0", "PYTHONPATH": str(TOY.parent)}
    env.pop("VISLAB_RUN_DIR", None)
    res = subprocess.run([sys.executable, str(TOY), str(out), str(devices)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "toy.json").read_text())


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    return _run_toy(base / "one", 1), _run_toy(base / "two", 2)


def test_ddp_gives_the_single_process_metrics(toy_runs):
    one, two = toy_runs
    for task in ("structured", "tensor"):
        assert set(one[task]["val"]) == set(two[task]["val"])
        for k, v in one[task]["val"].items():
            assert two[task]["val"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (task, k)


def test_padding_duplicates_are_not_counted(toy_runs):
    one, two = toy_runs
    # 7 validation samples on 2 ranks: the sampler pads to 8; the metric must still see 7, each once
    for run in (one, two):
        assert run["structured"]["val"]["n"] == 7
        assert run["structured"]["val"]["id_sum"] == sum(range(1000, 1007))
        assert run["tensor"]["val"]["n"] == 7


def test_loss_components_are_averaged_per_epoch(toy_runs):
    one, _ = toy_runs
    val = one["structured"]["val"]
    assert val["loss"] == pytest.approx(val["loss_box"] + val["loss_aux"], rel=1e-6)


def test_evaluate_uses_the_validation_path(toy_runs):
    one, two = toy_runs
    for run in (one, two):
        for task in ("structured", "tensor"):
            for k, v in run[task]["evaluate"].items():
                assert run[task]["val"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (task, k)


class _Echo(StructuredTaskModule):
    def compute_loss(self, batch):
        x, targets = batch
        return None, [{"x": v} for v in self.model(x)], targets

    def metrics(self, outputs, targets):
        return {"ids": float(sum(t["id"] for t in targets)), "n": float(len(outputs))}


def test_evaluate_structured_without_loss():
    loader = [(torch.ones(2, 3), [{"id": 0}, {"id": 1}]), (torch.ones(1, 3), [{"id": 2}])]
    res = evaluate(_Echo(torch.nn.Identity()), loader)
    assert res.metrics == {"ids": 3.0, "n": 3.0}  # no loss key: compute_loss gave none
    assert [t["id"] for t in res.targets] == [0, 1, 2] and len(res.outputs) == 3


def test_dedupe_keeps_first_and_sorts():
    outs, ts = dedupe_by_id(["a", "b", "c", "d"], [{"id": 3}, {"id": 1}, {"id": 3}, {"id": 2}])
    assert outs == ["b", "d", "a"] and [t["id"] for t in ts] == [1, 2, 3]
    with pytest.raises(KeyError, match="'id'"):
        dedupe_by_id(["a"], [{"name": 1}])


def test_structured_outputs_must_be_lists():
    class Bad(_Echo):
        def compute_loss(self, batch):
            return None, torch.zeros(2), batch[1]

    with pytest.raises(TypeError, match="lists with one item per sample"):
        evaluate(Bad(torch.nn.Identity()), [(torch.ones(2, 3), [{"id": 0}, {"id": 1}])])
