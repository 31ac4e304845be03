"""Linear-attention family (issue 6): linear attention, simple GLA (RetNet, Lightning, Mamba-2 SSD), GLA,
DeltaNet, Gated DeltaNet and TTT-Linear, each in chunk / recurrent / parallel forms. Registry entries.

FLOPs count the multiply-adds (×2) of each form's matrix products as the kernels run them (chunk:
padded chunks in full; parallel: the visible (i, j) pairs; recurrent: per token); element-wise work
is not counted. Bytes count every input read and every output written once.
"""
from __future__ import annotations

import math

import torch

from ...registry import OpEntry, TensorSpec, register
from .kinds import FORMS_OF, OP_KINDS
from .reference import REFERENCES

SUMMARIES = {
    "linear_attention": "linear attention, no gate: S += k vᵀ",
    "simple_gla": "scalar-gated linear attention (RetNet, Lightning, Mamba-2 SSD): S = e^g S + k vᵀ",
    "gla": "gated linear attention, per-key-channel gate: S = diag(e^g) S + k vᵀ",
    "delta_rule": "DeltaNet: S = (I − β k kᵀ) S + β k vᵀ",
    "gated_delta_rule": "Gated DeltaNet: S = e^g (I − β k kᵀ) S + β k vᵀ",
    "ttt_linear": "TTT-Linear: mini-batch gradient descent on ½‖Wᵀk − v‖², state W [K, V]",
}
# per-token inputs besides q, k, v: name -> trailing dims
EXTRA_INPUTS = {
    "linear_attention": (),
    "simple_gla": (("g", ()),),
    "gla": (("g", ("K",)),),
    "delta_rule": (("beta", ()),),
    "gated_delta_rule": (("g", ()), ("beta", ())),
    "ttt_linear": (("eta", ()),),
}


def _lengths(s) -> list[int]:
    return list(s["seqlens"]) if "seqlens" in s else [s["T"]] * s["B"]


def _chunk(s) -> int:
    return s.get("mini_batch_size", s.get("chunk_size", 64))


def flops(op: str, s) -> int:
    """Matrix-product FLOPs of one call at shape ``s`` (see the module docstring)."""
    gate, rule = OP_KINDS[op]
    kd, vd, h = s["K"], s["V"], s["H"]
    total = 0
    for n in _lengths(s):
        if s["form"] == "recurrent":
            total += n * (6 if rule != "add" else 4) * kd * vd
        elif s["form"] == "parallel":
            total += n * (n + 1) // 2 * 2 * (kd + vd)
        else:
            c = _chunk(s)
            per = 2 * c * c * kd + 2 * c * (kd + c) * vd + 2 * kd * c * vd  # Q Kᵀ, [Q | P][S; U], Kᵀ U
            if rule == "delta":  # K Kᵀ, the triangular solve, Tm [βK | βV], W S
                per += 2 * c * c * kd + c ** 3 // 3 + 2 * c * c * (kd + vd) + 2 * c * kd * vd
            if rule == "ttt":  # W S
                per += 2 * c * kd * vd
            total += math.ceil(n / c) * per
    return total * h


def nbytes(op: str, s, dtype: str) -> int:
    e = torch.finfo(getattr(torch, dtype)).bits // 8
    kd, vd, h = s["K"], s["V"], s["H"]
    lens = _lengths(s)
    t = sum(lens)
    total = e * t * h * (2 * kd + 2 * vd)
    for _, extra in EXTRA_INPUTS[op]:
        total += 4 * t * h * (kd if extra else 1)
    if s["form"] != "parallel":
        total += 2 * 4 * len(lens) * h * kd * vd  # initial and final state, fp32
    return total


def make_inputs(op: str, s, dtype, device, seed: int = 0) -> dict:
    """Inputs of realistic magnitude: unit-norm keys for the delta rules, log-sigmoid gates."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    lens = _lengths(s)
    b, t = (1, sum(lens)) if "seqlens" in s else (s["B"], s["T"])
    h, kd, vd = s["H"], s["K"], s["V"]
    rnd = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float32)
    k = rnd(b, t, h, kd)
    k = torch.nn.functional.normalize(k, dim=-1) if OP_KINDS[op][1] != "add" else k / math.sqrt(kd)
    out = {"q": rnd(b, t, h, kd), "k": k, "v": rnd(b, t, h, vd)}
    out = {n: x.to(device=device, dtype=dt) for n, x in out.items()}
    for name, extra in EXTRA_INPUTS[op]:
        shape = (b, t, h, kd) if extra else (b, t, h)
        x = rnd(*shape)
        if name == "g":
            x = torch.nn.functional.logsigmoid(x + 3.0)  # mean decay ≈ e^-0.05
        elif name == "beta":
            x = torch.sigmoid(x)
        else:  # eta
            x = 0.5 * torch.sigmoid(x)
        out[name] = x.to(device)
    if "seqlens" in s:
        out["cu_seqlens"] = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return out


def _params(op: str):
    def params(s) -> dict:
        p = {"form": s["form"], "output_final_state": s["form"] != "parallel"}
        if op == "ttt_linear":
            p["mini_batch_size"] = _chunk(s)
        else:
            p["chunk_size"] = s.get("chunk_size", 64)
        return p
    return params


def _reference(op: str):
    ref = REFERENCES[op]

    def reference(*, form=None, chunk_size=None, **kwargs):  # noqa: ARG001  (the forms share one reference)
        return ref(**kwargs)
    reference.__name__ = ref.__name__
    reference.__doc__ = ref.__doc__
    return reference


ANCHORS = ((1, 32768, 16, 128), (8, 2048, 16, 128), (2, 8192, 16, 128))  # (B, T, H, D)


def _entry(op: str) -> OpEntry:
    extras = tuple(TensorSpec(name, ("B", "T", "H", *extra), "float32") for name, extra in EXTRA_INPUTS[op])
    return OpEntry(
        name=op,
        family="linear",
        summary=SUMMARIES[op],
        fixed_axes={"K": (64, 128), "V": (64, 128), "form": FORMS_OF[op],
                    ("mini_batch_size" if op == "ttt_linear" else "chunk_size"): (16, 32, 64, 128)},
        symbolic_axes=("B", "T", "H"),
        inputs=(TensorSpec("q", ("B", "T", "H", "K")), TensorSpec("k", ("B", "T", "H", "K")),
                TensorSpec("v", ("B", "T", "H", "V")), *extras),
        outputs=(TensorSpec("o", ("B", "T", "H", "V")), TensorSpec("final_state", ("N", "H", "K", "V"), "float32")),
        dtypes={"cuda": ("float16", "bfloat16"), "cpu": ("float32", "float16", "bfloat16")},
        reference=_reference(op),
        make_inputs=lambda s, dtype, device, seed=0: make_inputs(op, s, dtype, device, seed),
        params=_params(op),
        flops=lambda s: flops(op, s),
        bytes=lambda s, dtype: nbytes(op, s, dtype),
        api=f"tvm_attn.ops.linear.api:{op}",
        shapes={
            "quick": ({"B": 2, "T": 100, "H": 2, "K": 64, "V": 64, "form": "chunk", "chunk_size": 64},
                      {"B": 2, "T": 100, "H": 2, "K": 64, "V": 64, "form": "recurrent", "chunk_size": 64},
                      {"seqlens": [37, 200, 1], "H": 2, "K": 64, "V": 64, "form": "chunk", "chunk_size": 64}),
            "anchors": tuple({"B": b, "T": t, "H": h, "K": d, "V": d, "form": "chunk", "chunk_size": 64}
                             for b, t, h, d in ANCHORS),
        },
    )


ENTRIES = {op: register(_entry(op)) for op in OP_KINDS}

__all__ = ["ENTRIES", "FORMS_OF", "flops", "nbytes", "make_inputs"]
