"""The shape of an experiment: a typed config, a data description, its headline metric, demo settings,
argument checks and ``run``."""

from __future__ import annotations

from typing import Any, ClassVar

from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext


class Experiment:
    name: ClassVar[str]
    summary: ClassVar[str]
    data_help: ClassVar[str] = "embedded data by default"
    Config: ClassVar[type] = CommonConfig
    # The test metric that says whether the experiment made its point, and whether higher is better:
    # the demo index shows it for every variant, and the report's summary sentence names its winner.
    headline: ClassVar[tuple[str, bool]] = ("accuracy", True)
    # Seconds this experiment may take in `vislab demo` on 2 idle CPU cores (all seven share 12 minutes);
    # the demo index shows each experiment's time against it.
    demo_budget_s: ClassVar[float] = 90.0

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        """Config changes for `vislab demo` (and `--quick`) so the whole demo fits its time budget."""
        return {}

    def validate(self, cfg: Any, data: str | None, root: str | None) -> None:
        """Raise :class:`vislab.errors.UserError` for arguments or data that cannot work, before any work is
        done and before the run folder exists (unknown variants, missing folders, impossible sizes)."""

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Train and evaluate; write figures and the report into ``ctx.run``; return summary.json."""
        raise NotImplementedError
