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


def test_describe_has_comments_and_constraints():
    rows = {name: (tp, default, rule, comment) for name, tp, default, rule, comment in describe_config(CommonConfig)}
    assert rows["epochs"][1] == 10
    assert "early stopping" in rows["patience"][3]
    assert rows["lr"][2] == "> 0" and rows["seed"][2].startswith(">= 0")


@pytest.mark.parametrize("item, message", [
    ("lr=inf", "lr must be a finite number, got inf"), ("lr=nan", "lr must be a finite number, got nan"),
    ("seed=-1", "seed must be >= 0, got -1"), ("lr_factor=1.5", "lr_factor must be < 1"),
    ("weight_decay=-1e-3", "weight_decay must be >= 0"), ("limit_test=0", "limit_test must be >= 1"),
])
def test_declared_constraints_name_the_field(item, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(CommonConfig(), [item])


def test_constraints_on_tuples_and_choices():
    from dataclasses import dataclass

    from vislab.engine.config import check_constraints, param

    @dataclass
    class C(CommonConfig):
        sizes: tuple[float, ...] = param((1.0, 2.0), gt=0, length=2)
        pool: str = param("max", choices=("max", "avg"))

    check_constraints(C())
    for over, msg in ((["sizes=1,nan"], "finite"), (["sizes=1,2,3"], "2 items"), (["sizes=0,2"], "> 0"),
                      (["pool=sum"], "expected one of max, avg")):
        with pytest.raises(UserError, match=msg):
            apply_overrides(C(), over)


def test_a_redeclared_field_keeps_its_base_constraints():
    from dataclasses import dataclass

    @dataclass
    class Sub(CommonConfig):
        epochs: int = 30  # a new default only
        lr: float = 0.1

    for item, msg in (("epochs=0", "epochs must be >= 1"), ("lr=-1", "lr must be > 0"), ("lr=inf", "finite")):
        with pytest.raises(UserError, match=msg):
            apply_overrides(Sub(), [item])
    rows = {r[0]: r[3] for r in describe_config(Sub)}
    assert rows["epochs"] == ">= 1" and rows["lr"] == "> 0"
