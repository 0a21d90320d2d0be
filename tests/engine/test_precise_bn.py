"""Precise BatchNorm: statistics recomputed as true averages, only for training BN layers, and the
callback leaves the model (and its checkpoint) with statistics of its final weights."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vislab.engine.callbacks import PreciseBatchNorm, recompute_batchnorm
from vislab.engine.module import ClassificationModule


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(5, 3))


def _data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 10, 10, generator=g) * 2 + 1, torch.randint(0, 3, (n,), generator=g))


def test_recompute_equals_the_average_of_batch_statistics():
    net = _net()
    ds = _data()
    loader = DataLoader(ds, batch_size=8)
    net.train()
    for m in net:  # spoil the running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(7.0)
            m.running_var.fill_(0.01)
    net.eval()
    used = recompute_batchnorm(net, loader, batches=4)
    assert used == 4
    # expected: first BN's statistics = mean over the 4 batches of per-batch mean / unbiased var of conv1's output
    with torch.no_grad():
        feats = [net[0](x) for x, _ in list(loader)[:4]]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, var, rtol=1e-5, atol=1e-6)
    # modes and momentum restored
    assert not any(m.training for m in net.modules())
    assert net[1].momentum == 0.1 and net[4].momentum == 0.1


def test_recompute_leaves_frozen_layers_and_modes_alone():
    net = _net()
    net.train()
    frozen = net[1]
    frozen.eval()
    before = frozen.running_mean.clone()
    recompute_batchnorm(net, DataLoader(_data(), batch_size=8), batches=2,
                        bns=[m for m in net.modules() if isinstance(m, nn.BatchNorm2d) and m.training])
    torch.testing.assert_close(frozen.running_mean, before)
    assert not frozen.training and net[4].training and net[7].training
    assert net[4].num_batches_tracked.item() == 2


def test_precise_bn_rejects_zero_batches():
    with pytest.raises(ValueError, match="batches >= 1"):
        PreciseBatchNorm(0)


def test_callback_gives_statistics_of_the_final_weights(tmp_path):
    module = ClassificationModule(_net(), lr=1e-2)
    loader = DataLoader(_data(), batch_size=8)
    trainer = L.Trainer(max_epochs=2, callbacks=[PreciseBatchNorm(3)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu", default_root_dir=str(tmp_path))
    seen = {}

    class Probe(L.Callback):  # what validation sees
        def on_validation_start(self, trainer, pl_module):
            seen["mean"] = pl_module.model[4].running_mean.clone()

    trainer.callbacks.append(Probe())
    trainer.fit(module, loader, DataLoader(_data(16, seed=2), batch_size=8))
    module.collect("train"), module.collect("val")
    got = module.model[4].running_mean.clone()
    torch.testing.assert_close(seen["mean"], got)
    # the same recomputation done by hand on the final weights gives the same statistics
    reference = _net()
    reference.load_state_dict(module.model.state_dict())
    reference.train()
    reference.eval()
    recompute_batchnorm(reference, loader, batches=3)
    torch.testing.assert_close(got, reference[4].running_mean, rtol=1e-5, atol=1e-6)
    # and they differ from what plain momentum updates would have left
    plain = ClassificationModule(_net(), lr=1e-2)
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
              default_root_dir=str(tmp_path)).fit(plain, loader, DataLoader(_data(16, seed=2), batch_size=8))
    assert not torch.allclose(plain.model[4].running_mean, got, atol=1e-3)
