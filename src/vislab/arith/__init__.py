"""Conv arithmetic: shapes, parameters, MACs and exact receptive fields of layer specs and modules,
attention costs, and hand-worked convolution examples (``vislab arith`` on the command line)."""

from torch import nn

from vislab.arith.analyze import Analysis, analyze_spec
from vislab.arith.attention import mha_params, msa_macs, wmsa_macs
from vislab.arith.build import build_module
from vislab.arith.probe import probe_receptive_field
from vislab.arith.spec import SpecError, parse_spec
from vislab.arith.trace import load_model, trace_module

__all__ = ["Analysis", "SpecError", "analyze", "analyze_spec", "build_module", "load_model", "mha_params",
           "msa_macs", "parse_spec", "probe_receptive_field", "trace_module", "wmsa_macs"]


def analyze(model_or_spec: str | nn.Module, input_shape: str | tuple[int, ...]) -> dict:
    """Per-layer table and totals for a layer-spec string or an ``nn.Module`` (JSON-serialisable dict).

    ``input_shape`` is ``C×H×W`` without the batch, as a tuple or a string like ``"3x224x224"``.
    """
    if isinstance(model_or_spec, str):
        return analyze_spec(model_or_spec, input_shape).to_dict()
    if isinstance(model_or_spec, nn.Module):
        return trace_module(model_or_spec, input_shape).to_dict()
    raise TypeError(f"analyze expects a layer-spec string or an nn.Module, got {type(model_or_spec).__name__}")
