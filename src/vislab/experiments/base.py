"""The shape of an experiment: a typed config, a data description, demo settings and ``run``."""

from __future__ import annotations

from typing import Any, ClassVar

from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext


class Experiment:
    name: ClassVar[str]
    summary: ClassVar[str]
    data_help: ClassVar[str] = "embedded data by default"
    Config: ClassVar[type] = CommonConfig

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        """Config changes for `vislab demo` (and `--quick`) so the whole demo fits its time budget."""
        return {}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Train and evaluate; write figures and the report into ``ctx.run``; return summary.json."""
        raise NotImplementedError
