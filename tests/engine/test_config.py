from dataclasses import dataclass

import pytest

from vislab.engine.config import CommonConfig, apply_overrides, describe_config
from vislab.errors import UserError


@dataclass
class _Cfg(CommonConfig):
    variants: tuple[str, ...] = ("a", "b")
    weights: str | None = None
    pretrained: bool = True


def test_overrides_are_typed():
    cfg = apply_overrides(_Cfg(), ["epochs=3", "lr=0.01", "variants=x,y,z", "weights=none", "pretrained=false",
                                   "limit_train=7"])
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.lr == pytest.approx(0.01)
    assert cfg.variants == ("x", "y", "z")
    assert cfg.weights is None
    assert cfg.pretrained is False
    assert cfg.limit_train == 7


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError, match=r"unknown config key 'epoch'; valid keys: epochs, batch_size"):
        apply_overrides(_Cfg(), ["epoch=3"])


@pytest.mark.parametrize("item, message", [
    ("epochs=three", "expected an integer"),
    ("lr=fast", "expected a number"),
    ("pretrained=maybe", "expected true or false"),
    ("epochs", "expected KEY=VALUE"),
    ("epochs=0", "epochs must be >= 1"),
    ("limit_val=0", "limit_val must be >= 1"),
])
def test_bad_values(item, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(_Cfg(), [item])


def test_describe_has_comments():
    rows = {name: (tp, default, comment) for name, tp, default, comment in describe_config(CommonConfig)}
    assert rows["epochs"][1] == 10
    assert "early stopping" in rows["patience"][2]
