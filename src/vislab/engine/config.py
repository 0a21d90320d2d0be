"""Typed experiment configs and type-checked ``--set key=value`` overrides.

Every experiment's config is a dataclass that extends :class:`CommonConfig` (nanoGPT's
``GPTConfig`` idea: configuration is data, one comment per field). The CLI's ``--set`` values are
parsed against the field types; an unknown key is an error that lists the valid ones.

Constraints sit on the fields: ``lr: float = param(1e-3, gt=0)``. :func:`check_constraints` checks every
field of a config in one place (ranges, choices, lengths; every float, and every number of a tuple, must
be finite), naming the field; ``vislab show`` prints them (:func:`constraint_text`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from vislab.errors import UserError


def param(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, choices: tuple[Any, ...] | None = None, length: int | None = None,
          each: bool = True) -> Any:
    """A config field with its constraints: ``ge``/``gt``/``le``/``lt`` bound the value (or, for a tuple, each
    item when ``each``), ``choices`` lists the allowed values (for a tuple: of each item), ``length`` fixes a
    tuple's length. ``None`` (for an optional field) passes every check."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "length": length}.items()
            if v is not None}
    meta["each"] = each
    return field(default=default, metadata={"constraints": meta})


@dataclass
class CommonConfig:
    """The keys every experiment shares (SPEC "Interfaces")."""

    epochs: int = param(10, ge=1)  # maximum epochs per training stage (early stopping may end sooner)
    batch_size: int = param(32, ge=1)  # samples per optimisation step (per device under DDP)
    lr: float = param(1e-3, gt=0)  # initial learning rate (ReduceLROnPlateau lowers it)
    image_size: int = param(128, ge=1)  # square side, in pixels, images are resized to
    num_workers: int = param(0, ge=0)  # DataLoader worker processes (0 = load in the training process)
    limit_train: int | None = param(None, ge=1)  # at most this many training samples (None = all)
    limit_val: int | None = param(None, ge=1)  # at most this many validation samples
    limit_test: int | None = param(None, ge=1)  # at most this many test samples
    seed: int = param(0, ge=0, lt=2**32)  # seeds Python, NumPy and torch; the same seed gives the same run on CPU
    patience: int = param(5, ge=1)  # early stopping: epochs without val-loss improvement before stopping
    lr_patience: int = param(2, ge=0)  # ReduceLROnPlateau: epochs without improvement before lr *= lr_factor
    lr_factor: float = param(0.5, gt=0, lt=1)  # ReduceLROnPlateau factor
    weight_decay: float = param(1e-4, ge=0)  # AdamW weight decay
    precise_bn: int = param(0, ge=0)  # recompute BatchNorm statistics over this many training batches (0 = off)


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


def describe_config(cfg_cls: type) -> list[tuple[str, str, Any, str, str]]:
    """(name, type, default, constraints, comment) for each field, for `vislab show`."""
    hints = typing.get_type_hints(cfg_cls)
    out = []
    for f in fields(cfg_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, _type_name(hints[f.name]), default, constraint_text(f, cfg_cls),
                    _field_comment(cfg_cls, f.name)))
    return out


def constraints_of(cfg_cls: type, name: str) -> dict[str, Any]:
    """The constraints of field ``name``: its own, or, when a subclass redeclares the field with a new default
    only (``epochs: int = 30``), those its base classes declared."""
    for klass in cfg_cls.__mro__:
        if dataclasses.is_dataclass(klass):
            f = {x.name: x for x in fields(klass)}.get(name)
            if f is not None and f.metadata.get("constraints"):
                return dict(f.metadata["constraints"])
    return {}


def constraint_text(f: dataclasses.Field, cfg_cls: type | None = None) -> str:
    """``"> 0"``, ``">= 1, < 4294967296"``, ``"one of max, avg"``, ``"2 items, each >= 0"`` (empty: none)."""
    c = constraints_of(cfg_cls, f.name) if cfg_cls is not None else dict(f.metadata.get("constraints", {}))
    parts = [f"{op} {c[k]:g}" if isinstance(c[k], float) else f"{op} {c[k]}"
             for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in c]
    if "choices" in c:
        parts.append("one of " + ", ".join(map(str, c["choices"])))
    text = ", ".join(parts)
    if "length" in c:
        text = f"{c['length']} items" + (f", each {text}" if text else "")
    return text


def _check_number(key: str, v: Any, c: dict[str, Any], what: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise UserError(f"{key} must be a finite number, got {v}{what}")
    if "choices" in c and v not in c["choices"]:
        raise UserError(f"invalid value for {key}: {v!r}{what}; expected one of {', '.join(map(str, c['choices']))}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    for k, ok, op in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                      ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if k in c and not ok(v, c[k]):
            raise UserError(f"{key} must be {op} {c[k]}, got {v}{what}")


def check_constraints(cfg: Any) -> None:
    """Check every field of ``cfg`` against its declared constraints; every float must be finite. Raises
    :class:`UserError` naming the field, the rule and the value."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if v is None:
            continue
        c = constraints_of(type(cfg), f.name)
        if isinstance(v, (tuple, list)):
            if "length" in c and len(v) != c["length"]:
                raise UserError(f"{f.name} must have {c['length']} items, got {len(v)}: {tuple(v)}")
            for i, item in enumerate(v):
                _check_number(f.name, item, c if c.get("each", True) else {}, f" (item {i + 1} of {tuple(v)})")
        else:
            _check_number(f.name, v, c, "")


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
    """The declared constraints of every field (kept under this name for the callers)."""
    check_constraints(cfg)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
