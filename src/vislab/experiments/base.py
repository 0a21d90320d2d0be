"""What an experiment declares: its science, and nothing else.

The protocol (:mod:`vislab.protocol.runner`) owns the run: validate → data → seeds × variants → baselines →
aggregate → claims → report. An experiment subclasses :class:`Experiment` and declares

* ``Config`` — a dataclass of its fields (constraints on the fields, see :func:`vislab.engine.config.param`);
* ``validate(cfg, data, root)`` — checks that need more than one field or the data on disk (before any write);
* ``load_data(ctx)`` — the splits, built once, with ``.info`` (``name``, ``train``/``val``/``test`` sizes,
  ``description``);
* ``variants(cfg)`` and ``run_variant(ctx, data, variant)`` — build, train (``fit_stage``) and evaluate one
  variant with ``ctx.cfg.seed``, returning a :class:`~vislab.protocol.results.VariantResult`;
* ``baselines(ctx, data)`` — untrained rows (GrabCut, phase correlation, the box), computed once;
* ``after_seed(ctx, data, results)`` — the one named step for rows derived from a seed's trained variants;
* ``claims`` — what the numbers should show (:class:`~vislab.protocol.claims.Claim`);
* ``describe(ctx, data)`` and ``report(ctx, rep, result, data)`` — the setup paragraph and its own sections;
* ``demo_overrides(quick)`` — the settings of ``vislab demo``.

Name, one-line summary, headline metric and demo budget are declared once, in the registry
(:mod:`vislab.experiments._registry`), readable without importing torch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext


class Experiment:
    name: ClassVar[str]
    data_help: ClassVar[str] = "embedded data by default"
    Config: ClassVar[type] = CommonConfig
    claims: ClassVar[tuple[Any, ...]] = ()  # vislab.protocol.claims.Claim
    table_metrics: ClassVar[tuple[str, ...]] = ()  # test metrics of the headline table (besides the headline)
    curve_metrics: ClassVar[tuple[str, ...]] = ("loss",)  # per-epoch curves of the report
    info: Any = None  # the registry entry (set by get_experiment)

    # -- from the registry ----------------------------------------------------------------------
    @property
    def summary(self) -> str:
        return self.info.summary if self.info else ""

    @property
    def headline(self) -> tuple[str, bool]:
        return (self.info.headline, self.info.higher_is_better) if self.info else ("accuracy", True)

    @property
    def demo_budget_s(self) -> float:
        return self.info.demo_budget_s if self.info else 90.0

    # -- the science ----------------------------------------------------------------------------
    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        """Config changes for `vislab demo` (and `--quick`) so the whole demo fits its time budget."""
        return {}

    def validate(self, cfg: Any, data: str | None, root: str | None) -> None:
        """Raise :class:`vislab.errors.UserError` for arguments or data that cannot work, before any work is
        done and before the run folder exists (unknown variants, missing folders, impossible sizes)."""

    def variants(self, cfg: Any) -> list[str]:
        return list(getattr(cfg, "variants", ()))

    def load_data(self, ctx: RunContext) -> Any:
        raise NotImplementedError

    def run_variant(self, ctx: RunContext, data: Any, variant: str) -> Any:
        raise NotImplementedError

    def baselines(self, ctx: RunContext, data: Any) -> dict[str, Any]:
        return {}

    def after_seed(self, ctx: RunContext, data: Any, results: dict[str, Any]) -> dict[str, Any]:
        """Extra rows computed from one seed's trained variants (e.g. a hybrid of a network and a classical
        method); returned rows join that seed's variants."""
        return {}

    def describe(self, ctx: RunContext, data: Any) -> str:
        return data.info.get("description", "") if hasattr(data, "info") else ""

    def report(self, ctx: RunContext, rep: Any, result: Any, data: Any) -> None:
        """The experiment's own report sections (after the shared headline table, claims and curves)."""

    def summary_extra(self, ctx: RunContext, data: Any, result: Any) -> dict[str, Any]:
        """Top-level keys this experiment adds to summary.json."""
        return {}

    def load_model(self, checkpoint: Any) -> Any:
        """The model saved in one of this experiment's checkpoints (for ``RunResult.model``)."""
        from vislab.explain.cli import load_classifier

        return load_classifier(checkpoint)[0]
