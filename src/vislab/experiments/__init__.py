"""One module per experiment, plus their registry (`vislab list`)."""

from vislab.experiments._registry import describe_experiment, get_experiment, list_experiments

__all__ = ["describe_experiment", "get_experiment", "list_experiments"]
