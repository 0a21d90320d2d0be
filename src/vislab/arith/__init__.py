"""Conv arithmetic: shapes, parameters, MACs and exact receptive fields of layer specs and modules,
attention costs, and hand-worked convolution examples (``vislab arith`` on the command line)."""

from vislab.arith.analyze import Analysis, analyze, analyze_spec
from vislab.arith.attention import mha_params, msa_macs, wmsa_macs
from vislab.arith.probe import probe_receptive_field
from vislab.arith.spec import SpecError, build_module, parse_spec
from vislab.arith.trace import load_model, trace_module

__all__ = ["Analysis", "SpecError", "analyze", "analyze_spec", "build_module", "load_model", "mha_params",
           "msa_macs", "parse_spec", "probe_receptive_field", "trace_module", "wmsa_macs"]
