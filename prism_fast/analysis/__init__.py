"""prism_fast.analysis: PRISM's mechanistic analyses of checkpoints (SPEC section 5), streaming over checkpoints of
any size. The Python API mirrors `python -m prism_fast.analyze <command>`:

- weight_change(base, new) / update_direction(base, b, c) / trajectory(ckpts): streamed per-element statistics
- linear_cka(X, Y), cka_compare(a, b, inputs): representation similarity per layer
- landscape(base, mt, rl): scores on the plane W_base + a (W_MT - W_base) + b (W_RL - W_MT)
- open_checkpoint(path): HF safetensors (sharded or not) and DCP readers; classify(name): component of a parameter
"""
from prism_fast.analysis.cka import cka_compare, cka_kernel_ref, linear_cka
from prism_fast.analysis.components import COMPONENTS, GROUPS, classify, layer_index
from prism_fast.analysis.engine import DEFAULT_THRESHOLDS, compare
from prism_fast.analysis.landscape import landscape, next_token_loss
from prism_fast.analysis.readers import open_checkpoint
from prism_fast.analysis.report import write_report
from prism_fast.analysis.weights import trajectory, update_direction, weight_change

__all__ = ["COMPONENTS", "DEFAULT_THRESHOLDS", "GROUPS", "cka_compare", "cka_kernel_ref", "classify", "compare",
           "landscape", "layer_index", "linear_cka", "next_token_loss", "open_checkpoint", "trajectory",
           "update_direction", "weight_change", "write_report"]
