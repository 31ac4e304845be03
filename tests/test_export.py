"""ONNX export and import (CPU): torch -> ONNX -> onnxruntime matches torch, ONNX -> TVM (LLVM) matches
onnxruntime, for every registered op with an export rule, at two sequence lengths through one file."""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tvm_attn
from tvm_attn import _tvm, registry
from tvm_attn.export import RULES, cli, examples, from_onnx, onnx_tvm, to_onnx
from tvm_attn.export.examples import llama_block

TOL = 1e-4
HEAD_AXES = ("Hq", "Hkv")  # static in an export: the head ratio fixes the kernel's specialisation


def assert_close(name: str, got, want, tol: float = TOL) -> None:
    """Max abs error <= tol; -inf (lse of a row with no key) must sit in the same places."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    inf = np.isinf(want)
    assert np.array_equal(np.isinf(got), inf), f"{name}: -inf in different places"
    assert not np.isnan(got).any(), f"{name}: NaN"
    err = float(np.abs(got[~inf] - want[~inf]).max()) if (~inf).any() else 0.0
    assert err <= tol, f"{name}: max error {err:.3e} > {tol:.0e}"


class OpModel(torch.nn.Module):
    """Calls a registry op's public function on its tensor inputs (other inputs fixed), lse included."""

    def __init__(self, entry: registry.OpEntry, shape: dict, fixed: dict) -> None:
        super().__init__()
        self.entry, self.shape, self.fixed = entry, shape, fixed
        self.names = [t.name for t in entry.inputs]

    def forward(self, *tensors: torch.Tensor):
        fn = self.entry.function()
        extra = {"return_lse": True} if "return_lse" in inspect.signature(fn).parameters else {}
        return fn(**dict(zip(self.names, tensors)), **self.fixed, **self.entry.params(self.shape), **extra)


def _dynamic_shapes(entry: registry.OpEntry) -> tuple[dict[int, torch.export.Dim], ...]:
    dims: dict[str, torch.export.Dim] = {}
    symbolic = set(entry.symbolic_axes) - set(HEAD_AXES)

    def dim(name: str) -> torch.export.Dim:
        if name not in dims:
            dims[name] = torch.export.Dim(name.replace("+", "_plus_"))
        return dims[name]

    return tuple({i: dim(d) for i, d in enumerate(t.dims) if d.removesuffix("+1") in symbolic} for t in entry.inputs)


def _other_lengths(entry: registry.OpEntry, shape: dict) -> dict:
    """The same op at other batch and sequence lengths (varlen shapes list per-sequence lengths)."""
    out = dict(shape)
    for key, val in shape.items():
        if key in entry.symbolic_axes and key not in HEAD_AXES:
            out[key] = val // 2 + 3
        elif key.startswith("seqlens_"):
            out[key] = [*reversed(val), 5]
    return out


def _split(entry: registry.OpEntry, inputs: dict) -> tuple[list[torch.Tensor], dict]:
    names = [t.name for t in entry.inputs]
    return [inputs[n] for n in names], {k: v for k, v in inputs.items() if k not in names}


def _ort(path: Path, tensors: list[torch.Tensor]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), tensors)})


def _exported_ops() -> list[registry.OpEntry]:
    return [e for e in registry.all_ops() if f"tvm_attn::{e.name}" in RULES]


def test_every_rule_has_a_registered_op():
    names = {f"tvm_attn::{e.name}" for e in registry.all_ops()}
    assert set(RULES) <= names, f"rules for unknown ops: {set(RULES) - names}"
    assert {e.name for e in _exported_ops()} >= {"flash_fwd", "flash_fwd_varlen"}


@pytest.mark.parametrize("entry", _exported_ops(), ids=lambda e: e.name)
def test_round_trip(entry: registry.OpEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every quick shape: torch -> ONNX; onnxruntime == torch, and TVM == onnxruntime (through the op's
    converter, and through its inlined function body as for an op without one) at two lengths."""
    onnx_op = RULES[f"tvm_attn::{entry.name}"].onnx_op
    for n, shape in enumerate(entry.shapes["quick"]):
        # exported at other lengths: torch.export fixes an axis of size 1 (quick shapes have B = 1)
        exported = _other_lengths(entry, shape)
        tensors, fixed = _split(entry, entry.make_inputs(exported, torch.float32, "cpu", seed=n))
        path = tmp_path / f"{entry.name}_{n}.onnx"
        to_onnx(OpModel(entry, exported, fixed), tensors, path, dynamic_shapes={"tensors": _dynamic_shapes(entry)})
        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)
        assert [f.name for f in proto.functions] == [onnx_op]
        engines = {"TVM": from_onnx(path)}
        with monkeypatch.context() as m:
            m.delitem(onnx_tvm.DOMAIN_CONVERTERS, onnx_op, raising=False)
            engines["TVM (function body)"] = from_onnx(path)
        for other in (shape, exported):
            other_tensors, other_fixed = _split(entry, entry.make_inputs(other, torch.float32, "cpu", seed=n + 7))
            want = OpModel(entry, other, other_fixed)(*other_tensors)
            got_ort = _ort(path, other_tensors)
            assert len(got_ort) == len(want)
            for i, (w, o) in enumerate(zip(want, got_ort)):
                assert_close(f"{entry.name} {other} output {i}: onnxruntime vs torch", o, w)
            for engine, model in engines.items():
                got = model(*other_tensors)
                assert len(got) == len(got_ort)
                for i, (t, o) in enumerate(zip(got, got_ort)):
                    assert_close(f"{entry.name} {other} output {i}: {engine} vs onnxruntime", t.numpy(), o)


class Attn(torch.nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return tvm_attn.flash_attention(q, k, v, causal=self.causal)


@pytest.mark.parametrize("causal,shared_length,op", [
    (False, False, "Attention"),  # no mask: any lengths
    (True, True, "Attention"),  # square causal mask: is_causal agrees
    (True, False, "FlashFwd"),  # ONNX's is_causal is top-left, ours bottom-right: the function
], ids=["full", "causal_square", "causal_rect"])
def test_dense_standard_form(causal: bool, shared_length: bool, op: str, tmp_path: Path):
    """Dense flash without lse becomes the standard Attention exactly where the semantics match."""
    b, t, tk = torch.export.Dim("B"), torch.export.Dim("T"), torch.export.Dim("Tk")
    kv = {0: b, 1: t if shared_length else tk}
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 48, h, 64, generator=g) for h in (4, 2, 2))
    path = tmp_path / "attn.onnx"
    proto = to_onnx(Attn(causal), (q, k, v), path, dynamic_shapes=({0: b, 1: t}, kv, kv))
    ops = [n.op_type for n in proto.graph.node]
    assert op in ops and ({"Attention", "FlashFwd"} - {op}).isdisjoint(ops), ops
    if op == "Attention":
        node = next(n for n in proto.graph.node if n.op_type == "Attention")
        assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["is_causal"] == int(causal)
    tvm_model = from_onnx(path)
    lengths = [(48, 48), (17, 17)] if shared_length else [(48, 48), (9, 70), (70, 9)]
    for tq_, tk_ in lengths:
        q, k, v = (torch.randn(3, n, h, 64, generator=g) for n, h in ((tq_, 4), (tk_, 2), (tk_, 2)))
        want = Attn(causal)(q, k, v)
        (got_ort,) = _ort(path, [q, k, v])
        assert_close(f"Tq={tq_} Tk={tk_}: onnxruntime vs torch", got_ort, want)
        assert_close(f"Tq={tq_} Tk={tk_}: TVM vs onnxruntime", tvm_model(q, k, v).numpy(), got_ort)


def test_llama_block(tmp_path: Path):
    ex = llama_block()
    path = tmp_path / "llama.onnx"
    proto = to_onnx(ex.model, ex.args, path, dynamic_shapes=ex.dynamic_shapes)
    attn = [n for n in proto.graph.node if n.op_type == "Attention"]
    assert len(attn) == 1 and not proto.functions
    assert {a.name: onnx.helper.get_attribute_value(a) for a in attn[0].attribute}["is_causal"] == 1
    tvm_model = from_onnx(path)
    for shape in ((2, 64, 256), (1, 37, 256)):
        x = torch.randn(*shape)
        with torch.no_grad():
            want = ex.model(x)
        (got_ort,) = _ort(path, [x])
        assert_close(f"{shape}: onnxruntime vs torch", got_ort, want)
        assert_close(f"{shape}: TVM vs onnxruntime", tvm_model(x).numpy(), got_ort)


def _attention_model(path: Path, *, causal: int, scale: float) -> None:
    """A hand-written standard Attention on 4D [B, H, T, D] inputs (GQA 4 / 2 heads)."""
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    q = h.make_tensor_value_info("q", f, ["B", 4, "Tq", 64])
    k, v = (h.make_tensor_value_info(n, f, ["B", 2, "Tk", 64]) for n in ("k", "v"))
    y = h.make_tensor_value_info("y", f, ["B", 4, "Tq", 64])
    node = h.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=causal, scale=scale)
    model = h.make_model(h.make_graph([node], "attn", [q, k, v], [y]), opset_imports=[h.make_opsetid("", 23)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def test_standard_attention_4d(tmp_path: Path):
    """ONNX Attention written by another exporter: [B, H, T, D], its own scale, Tq != Tk."""
    path = tmp_path / "attn4d.onnx"
    _attention_model(path, causal=0, scale=0.3)
    tvm_model = from_onnx(path)
    g = torch.Generator().manual_seed(2)
    for b, tq, tk in ((2, 33, 70), (1, 70, 5)):
        q, k, v = (torch.randn(b, h, t, 64, generator=g) for h, t in ((4, tq), (2, tk), (2, tk)))
        (want,) = _ort(path, [q, k, v])
        assert_close(f"Tq={tq} Tk={tk}: TVM vs onnxruntime", tvm_model(q, k, v).numpy(), want)


def test_causal_attention_of_unequal_lengths_is_refused(tmp_path: Path):
    path = tmp_path / "attn4d_causal.onnx"
    _attention_model(path, causal=1, scale=0.125)
    with pytest.raises(NotImplementedError, match="top-left"):
        from_onnx(path)


def test_cli_export_and_run_onnx(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert set(cli.EXAMPLE_NAMES) == set(examples.EXAMPLES)
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    path = tmp_path / "block.onnx"
    for argv in (["export", "--example", "llama-block", "--out", str(path)],
                 ["run-onnx", str(path), "--dim", "batch=1", "--dim", "seq=20", "--repeat", "2", "--tol", "1e-4"]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0, argv
    out = capsys.readouterr().out
    assert "ops " in out and "Attention" in out and "max |TVM - onnxruntime|" in out, out


@torch.library.custom_op("tvm_attn_test::double", mutates_args=())
def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_double.register_fake
def _(x):
    return torch.empty_like(x)


class Double(torch.nn.Module):
    def forward(self, x):
        return torch.ops.tvm_attn_test.double(x) + 1


def test_op_without_rule_is_named(tmp_path: Path):
    with pytest.raises(NotImplementedError, match="tvm_attn_test::double has no ONNX export rule"):
        to_onnx(Double(), (torch.randn(4),), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_converters_are_restored():
    _, frontend = _tvm.relax_onnx()
    original = frontend._get_convert_map
    with pytest.raises(RuntimeError, match="inside"):
        with onnx_tvm.converters("llvm"):
            assert "FlashFwd" in frontend._get_convert_map()
            raise RuntimeError("inside")
    assert frontend._get_convert_map is original and "FlashFwd" not in original()


def test_rms_norm_float16_computes_in_float32(tmp_path: Path):
    """The example's RMSNorm in fp16 runs its mean of squares in fp32 (as torch's reduction accumulates):
    rows whose sum of squares passes the fp16 maximum (65504) stay finite and right through ONNX -> TVM."""
    norm = examples.RMSNorm(256).half().eval()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 256))
    seq = torch.export.Dim("seq")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 256, generator=g).half()
    path = tmp_path / "rms.onnx"
    proto = to_onnx(norm, (x,), path, dynamic_shapes=({1: seq},))
    # fp32 inside the graph: an RMSNormalization computing in fp32, or explicit casts around the mean
    ops = {n.op_type: n for n in proto.graph.node}
    if "RMSNormalization" in ops:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in ops["RMSNormalization"].attribute}
        assert attrs.get("stash_type", 1) == 1
    else:
        assert "Cast" in ops, sorted(ops)
    tvm_model = from_onnx(path)
    # RMS 1 and RMS 40 (sum of squares ~4e5: inf in fp16)
    for scale in (1.0, 40.0):
        x = (torch.randn(1, 13, 256, generator=g) * scale).half()
        with torch.no_grad():
            want = norm(x).float()
        got = tvm_model(x).float()
        assert torch.isfinite(got).all(), f"scale {scale}: non-finite TVM output"
        rel = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))
        assert rel <= 1e-2, f"scale {scale}: rel err {rel:.2e}"
