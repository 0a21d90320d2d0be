"""Typed experiment configs and type-checked ``--set key=value`` overrides.

Every experiment's config is a dataclass that extends :class:`CommonConfig` (nanoGPT's
``GPTConfig`` idea: configuration is data, one comment per field). The CLI's ``--set`` values are
parsed against the field types; an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from vislab.errors import UserError


@dataclass
class CommonConfig:
    """The keys every experiment shares (SPEC "Interfaces")."""

    epochs: int = 10  # maximum epochs per training stage (early stopping may end sooner)
    batch_size: int = 32  # samples per optimisation step (per device under DDP)
    lr: float = 1e-3  # initial learning rate (ReduceLROnPlateau lowers it)
    image_size: int = 128  # square side, in pixels, images are resized to
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    limit_train: int | None = None  # at most this many training samples (None = all)
    limit_val: int | None = None  # at most this many validation samples
    limit_test: int | None = None  # at most this many test samples
    seed: int = 0  # seeds Python, NumPy and torch; the same seed gives the same run on CPU
    patience: int = 5  # early stopping: epochs without val-loss improvement before stopping
    lr_patience: int = 2  # ReduceLROnPlateau: epochs without improvement before lr *= lr_factor
    lr_factor: float = 0.5  # ReduceLROnPlateau factor
    weight_decay: float = 1e-4  # AdamW weight decay
    precise_bn: int = 0  # recompute BatchNorm statistics over this many training batches before validation (0 = off)


def config_fields(cfg_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cfg_cls)}


def _field_comment(cfg_cls: type, name: str) -> str:
    import inspect

    for klass in cfg_cls.__mro__:
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in src.splitlines():
            s = line.strip()
            if s.startswith(f"{name}:") and "#" in s:
                return s.split("#", 1)[1].strip()
    return ""


def describe_config(cfg_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, comment) for each field, for `vislab show`."""
    hints = typing.get_type_hints(cfg_cls)
    out = []
    for f in fields(cfg_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, _type_name(hints[f.name]), default, _field_comment(cfg_cls, f.name)))
    return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null", "") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _parse_value(raw, a, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"invalid value for {key}: {raw!r}")
    if origin is typing.Literal:
        if raw not in args:
            raise UserError(f"invalid value for {key}: {raw!r}; expected one of {', '.join(map(str, args))}")
        return raw
    if origin in (tuple, list):
        items = [s.strip() for s in raw.split(",") if s.strip()]
        item_tp = args[0] if args else str
        vals = [_parse_value(s, item_tp, key) for s in items]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"invalid value for {key}: {raw!r}; expected true or false")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"invalid value for {key}: {raw!r}; expected an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"invalid value for {key}: {raw!r}; expected a number") from None
    if tp is str:
        return raw
    raise UserError(f"cannot set {key} from the command line (type {tp})")


def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """Return a copy of dataclass ``cfg`` with ``key=value`` overrides applied, type-checked.

    ``overrides`` is a list of ``"key=value"`` strings (from ``--set``) or a dict of already typed
    values (from code). Unknown keys raise :class:`UserError` listing the valid keys.
    """
    hints = typing.get_type_hints(type(cfg))
    valid = [f.name for f in fields(cfg)]
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise UserError(f"invalid --set {item!r}; expected KEY=VALUE (valid keys: {', '.join(valid)})")
            k, v = item.split("=", 1)
            items.append((k.strip(), v.strip()))
    changes = {}
    for key, value in items:
        if key not in hints or key not in valid:
            raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        changes[key] = _parse_value(value, hints[key], key) if isinstance(value, str) else value
    new = dataclasses.replace(cfg, **changes)
    validate_common(new)
    return new


def validate_common(cfg: Any) -> None:
    for key in ("epochs", "batch_size", "image_size"):
        if hasattr(cfg, key) and getattr(cfg, key) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if hasattr(cfg, "lr") and cfg.lr <= 0:
        raise UserError(f"lr must be > 0, got {cfg.lr}")
    if hasattr(cfg, "num_workers") and cfg.num_workers < 0:
        raise UserError(f"num_workers must be >= 0, got {cfg.num_workers}")
    for key in ("limit_train", "limit_val", "limit_test"):
        v = getattr(cfg, key, None)
        if v is not None and v < 1:
            raise UserError(f"{key} must be >= 1 or none, got {v}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
