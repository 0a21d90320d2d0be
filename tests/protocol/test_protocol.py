"""The whole protocol on the toy experiment: seeds, claims, schema 2, the report, load_run, TensorBoard, exact
resume after a kill, divergence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy import Toy

from vislab.protocol.results import load_run
from vislab.protocol.runner import RunOptions, run_experiment

HERE = Path(__file__).parent
TINY = {"n_points": 120, "epochs": 2, "batch_size": 16}


def _run(out, **kw):
    return run_experiment(RunOptions(name="toy", experiment=Toy(), out=str(out), overrides={**TINY}, **kw))


def test_two_seeds_through_the_whole_protocol(tmp_path):
    out = tmp_path / "run"
    result = _run(out, seeds=2)
    s = json.loads((out / "summary.json").read_text())  # strict JSON
    assert s["schema"] == 2 and s["seeds"] == [0, 1] and s["status"] == "complete"
    acc = s["runs"]["mlp"]["test"]["accuracy"]
    assert len(acc["per_seed"]) == 2 and acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
    assert s["claims"][0]["n_seeds"] == 2 and s["claims"][0]["verdict"] in ("holds", "not shown", "fails")
    for f in ("config.yaml", "metrics.csv", "env.json", "report.md", "report.html", "figures/points.png",
              "figures/curves.png", "checkpoints/s0/mlp/best.ckpt", "checkpoints/s1/linear/last.ckpt"):
        assert (out / f).exists(), f
    assert not (out / ".lock").exists()
    report = (out / "report.md").read_text()
    assert "Claims checked over 2 seeds: mlp beats linear on accuracy" in report and "± " in report
    back = load_run(out, experiment=Toy())
    assert back.test("mlp")["accuracy"] == pytest.approx(acc["mean"]) and back.claims == result.claims
    assert "<table>" in back._repr_html_() and back.report_html == out / "report.html"
    model = back.model("mlp", seed=1)
    assert sum(p.numel() for p in model.parameters()) == s["runs"]["mlp"]["params"]
    rows = [(r["seed"], r["variant"], r["epoch"]) for r in back_rows(out)]
    assert len(rows) == len(set(rows)) == 2 * 2 * 2


def back_rows(out):
    from vislab.engine.run_dir import RunDir

    return RunDir(out).read_metrics()


def test_tensorboard_events_hold_every_variant(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _run(out, logger="tensorboard")
    for v in ("linear", "mlp"):
        folders = list((out / "tb" / "s0" / v / "train").rglob("events.out.tfevents.*"))
        assert folders, v
        acc = EventAccumulator(str(folders[0].parent))
        acc.Reload()
        assert {"train_loss", "val_loss", "val_accuracy", "lr", "epoch_s"} <= set(acc.Tags()["scalars"])
    # the end of the run: the report's figures as images, hparams per variant with the headline test metric
    figs = EventAccumulator(str(out / "tb" / "report" / "figures"))
    figs.Reload()
    pngs = {f"figures/{p.stem}" for p in (out / "figures").glob("*.png")}
    assert pngs and set(figs.Tags()["images"]) == pngs
    for v in ("linear", "mlp"):
        (ev,) = (out / "tb" / "report" / "hparams" / v).rglob("events.out.tfevents.*")
        acc = EventAccumulator(str(ev.parent))
        acc.Reload()
        assert "_hparams_/session_start_info" in acc.summary_metadata
        assert "test/accuracy" in acc.Tags()["scalars"]
        assert acc.Scalars("test/accuracy")[0].value == pytest.approx(
            json.loads((out / "summary.json").read_text())["runs"][v]["test"]["accuracy"]["mean"])


def test_an_existing_run_or_a_foreign_folder_is_refused(tmp_path):
    from vislab.errors import UserError

    _run(tmp_path / "run", logger="none")
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        _run(tmp_path / "run", logger="none")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my own notes")
    with pytest.raises(UserError, match="not a vislab run"):
        _run(tmp_path / "mine", logger="none")
    assert (tmp_path / "mine" / "report.md").read_text() == "my own notes"


def _cli(out, *, resume=False, kill=None, seeds=1, extra=None):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from toy import Toy; "
            "from vislab.protocol.runner import RunOptions, run_experiment; "
            "run_experiment(RunOptions(name='toy', experiment=Toy(), out=sys.argv[2], resume=sys.argv[3] == '1', "
            f"seeds={seeds}, logger='none', overrides={dict(TINY, epochs=3, **(extra or {}))!r}))")
    env = {**os.environ, "VISLAB_PROGRESS": "0"}
    env.pop("VISLAB_KILL_AFTER_EPOCHS", None)
    if kill:
        env["VISLAB_KILL_AFTER_EPOCHS"] = kill
    return subprocess.run([sys.executable, "-c", code, str(HERE), str(out), "1" if resume else "0"],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("kill", ["linear:1", "linear:2", "s1/mlp:2"])
def test_a_killed_run_resumes_exactly(tmp_path, kill):
    import torch

    seeds = 2 if kill.startswith("s1") else 1
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert _cli(ref, seeds=seeds).returncode == 0
    killed = _cli(cut, kill=kill, seeds=seeds)
    assert killed.returncode == 75, killed.stderr
    resumed = _cli(cut, resume=True, seeds=seeds)
    assert resumed.returncode == 0, resumed.stderr
    assert (cut / "metrics.csv").read_text().count("\n") == (ref / "metrics.csv").read_text().count("\n")
    strip = [{k: v for k, v in r.items() if k != "epoch_s"} for r in back_rows(ref)]
    assert [{k: v for k, v in r.items() if k != "epoch_s"} for r in back_rows(cut)] == strip
    sd = "s1/" if seeds == 2 else ""
    for v in ("linear", "mlp"):
        a = torch.load(ref / f"checkpoints/{sd}{v}/best.ckpt", weights_only=True)["state_dict"]
        b = torch.load(cut / f"checkpoints/{sd}{v}/best.ckpt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), v
    a, b = (json.loads((p / "summary.json").read_text()) for p in (ref, cut))
    assert a["runs"]["mlp"]["test"] == b["runs"]["mlp"]["test"]


def test_a_moved_run_resumes_with_its_own_checkpoints(tmp_path):
    killed = _cli(tmp_path / "a", kill="mlp:1")
    assert killed.returncode == 75
    (tmp_path / "a").rename(tmp_path / "b")
    resumed = _cli(tmp_path / "b", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert all(not Path(v["best_checkpoint"]).is_absolute() for v in state.values())


def test_divergence_is_recorded_and_raised(tmp_path):
    from vislab.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="linear/train epoch 1 step"):
        run_experiment(RunOptions(name="toy", experiment=Toy(), out=str(tmp_path / "r"), logger="none",
                                  overrides={**TINY, "lr": 1e20}))
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "diverged" and "loss is" in s["message"]


def test_bf16_mixed_precision_trains_on_cpu_and_is_recorded(tmp_path):
    out = tmp_path / "run"
    result = _run(out, logger="none", precision="bf16-mixed")
    assert json.loads((out / "env.json").read_text())["precision"] == "bf16-mixed"
    assert "precision bf16-mixed" in (out / "report.md").read_text()
    assert 0.0 <= result.test("mlp")["accuracy"] <= 1.0


def test_16_mixed_needs_a_gpu_on_the_cpu(tmp_path):
    import torch

    from vislab.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(UserError, match="16-mixed needs a CUDA GPU"):
        _run(tmp_path / "run", precision="16-mixed")
    assert not (tmp_path / "run").exists()


@pytest.mark.cuda
def test_16_mixed_on_cuda(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    result = _run(tmp_path / "run", logger="none", precision="16-mixed", accelerator="gpu")
    assert result.status == "complete"
