"""The ops of the linear-attention family as (gate, rule) pairs, and their forms (no TVM import).

gate: ``none``, ``scalar`` (one log decay per token and head) or ``vector`` (one per key channel);
rule: ``add`` (S += k vᵀ), ``delta`` (S += k (β (v − Sᵀk))ᵀ) or ``ttt`` (the delta step with every
gradient of a mini-batch taken at the mini-batch's first state).
"""
from __future__ import annotations

OP_KINDS: dict[str, tuple[str, str]] = {
    "linear_attention": ("none", "add"),
    "simple_gla": ("scalar", "add"),
    "gla": ("vector", "add"),
    "delta_rule": ("none", "delta"),
    "gated_delta_rule": ("scalar", "delta"),
    "ttt_linear": ("none", "ttt"),
}
FORMS = ("chunk", "recurrent", "parallel")
# the parallel (quadratic) form exists for the ops without a delta rule
FORMS_OF: dict[str, tuple[str, ...]] = {
    op: FORMS if rule == "add" else FORMS[:2] for op, (_, rule) in OP_KINDS.items()
}

# split kernels with more than one tiling, each for a class of shapes: (part, rule, gate) -> tiling names
# (the tilings themselves: schedules.linear.DEFAULT_SPLIT_VARIANTS["<part>_<name>"], gla's (a kernel of its
# own) "<part>_gla_<name>")
SPLIT_TILINGS = {("state", "add", "none"): ("many", "mid"), ("state", "add", "scalar"): ("many", "mid"),
                 ("state", "add", "vector"): ("many",),
                 ("state", "delta", "none"): ("v32", "v64"), ("state", "delta", "scalar"): ("v32", "v64")}
# the shape class each tiling is for, (B, T) at H 16 ("" the default's): tuning measures a tiling there
TILING_SHAPES = {"": (1, 32768), "many": (8, 2048), "mid": (2, 8192), "v64": (8, 2048), "v32": (2, 8192)}
# the shape class of the fused state and output kernel (``split_fused``: picked for many pairs)
FUSED_SHAPE = (8, 2048)
# the tiling of the add rule's state passes when they run split along the sequence (one whole state
# per CTA: the fewest re-reads of K and V; ``torch_ops.state_segment_chunks``)
SEGMENT_TILING = "whole"
