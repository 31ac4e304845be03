"""Probe: the delta rules' split kernels run in S segments along the sequence on three CUDA streams, so that
one segment's prep and output kernels overlap another segment's state kernel (which at few (sequence, head)
pairs seems to leave most of the card idle: 128 CTAs of 2 warps at (1, 32768), H 16). The state kernel carries the
state from one segment to the next through its final state / initial state arguments (fp32), so the result
is the plain split form's. Not the product's code path: this times what the overlap would buy.

For B = 1 (a segment of the sequence is then a contiguous view of every tensor): per segment, prep on a
low-priority stream, state on a high-priority one after that segment's prep, output on a low-priority one
after that segment's state. Checks the output and final state against the plain call, then times both
(CUDA events around a whole call, median), fla in the same process, bf16, H 16, K = V = 128, chunk 64.
Writes $OUT/overlap_probe.json.     python tools/device/overlap_probe.py [op] [T] [S,S,...]
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import torch

from bench.baselines import BASELINES
from bench.driver import provenance, time_calls
from tvm_attn import registry
from tvm_attn._tvm import tvm_ffi
from tvm_attn.ops.linear.build import LinearSpec, get
from tvm_attn.ops.linear.torch_ops import (_chunk_layout, _chunk_local_cumsum, _dtype_name, run_chunk_split,
                                           state_tiling)

op = sys.argv[1] if len(sys.argv) > 1 else "gated_delta_rule"
T = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
SEGS = [int(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 else [2, 4, 8]
B, H, D, C = 1, 16, 128, 64
DEV = os.environ.get("DEVICE", "cuda")  # cpu: the segmentation checked without streams (no timing)
CUDA = DEV == "cuda"
entry = registry.get(op)
shape = {**next(s for s in entry.shapes["anchors"] if s["H"] == H), "B": B, "T": T}
inputs = entry.make_inputs(shape, torch.bfloat16 if CUDA else torch.float32, DEV, seed=0)
q, k, v, g, beta = (inputs.get(x) for x in ("q", "k", "v", "g", "beta"))
scale = D ** -0.5
dev = q.device
gated = g is not None


def kern(part, tiles=""):
    return get(LinearSpec(op, "chunk", D, D, _dtype_name(q), False, C, part, tiles), dev)


# the state chain on a high-priority stream, prep and output on low-priority ones (None on the CPU)
hi, lo_p, lo_o = ((torch.cuda.Stream(priority=-1), torch.cuda.Stream(priority=0), torch.cuda.Stream(priority=0))
                  if CUDA else (None, None, None))


def on(stream):  # torch's and tvm-ffi's current stream both set to ``stream``
    return tvm_ffi.use_torch_stream(torch.cuda.stream(stream)) if CUDA else contextlib.nullcontext()


def mark(stream):  # an event recorded on ``stream`` (None on the CPU)
    if not CUDA:
        return None
    e = torch.cuda.Event()
    e.record(stream)
    return e


def wait(stream, event):
    if CUDA:
        stream.wait_event(event)


def plain():
    if CUDA:
        return run_chunk_split(op, q, k, v, g, beta, None, None, scale, C)
    from tvm_attn.ops.linear.torch_ops import run_kernel
    return run_kernel(op, q, k, v, g, beta, None, None, "chunk", scale, C)


def overlapped(S):
    n_chunks = -(-T // C)
    per = -(-n_chunks // S)
    _, _, indices = _chunk_layout(None, B, T, C, None)
    main = torch.cuda.current_stream() if CUDA else None
    gc = _chunk_local_cumsum(op, g, None, indices, C, D, D) if gated else None
    hs = torch.empty((n_chunks, H, D, D), dtype=q.dtype if CUDA else torch.float32, device=dev)
    w, u, vn = (torch.empty(x.shape, dtype=hs.dtype, device=dev) for x in (k, v, v))
    o = torch.empty_like(v)
    states = [torch.empty((0, H, D, D), dtype=torch.float32, device=dev)] + [
        torch.empty((1, H, D, D), dtype=torch.float32, device=dev) for _ in range(S)]
    bf = beta.float().contiguous()
    start = mark(main)
    for st in (hi, lo_p, lo_o):
        wait(st, start)
    tiling = state_tiling(op, B, H, D, D, dev)
    for i in range(S):
        c0, c1 = i * per, min((i + 1) * per, n_chunks)
        if c0 >= c1:
            break
        r = slice(c0 * C, min(c1 * C, T))
        sl = (lambda x: x[:, r])
        gcs = [sl(gc)] if gated else []
        with on(lo_p):
            kern("prep")(sl(k), sl(v), *gcs, sl(bf), sl(w), sl(u))
            e_p = mark(lo_p)
        wait(hi, e_p)
        with on(hi):
            kern("state", tiling)(sl(k), sl(w), sl(u), *gcs, states[i], hs[c0:c1], sl(vn), states[i + 1])
            e_s = mark(hi)
        wait(lo_o, e_s)
        with on(lo_o):
            kern("output")(sl(q), sl(k), sl(vn), *gcs, hs[c0:c1], sl(o), scale)
    for st in (hi, lo_p, lo_o):
        wait(main, mark(st))
    return o, states[S]


o_ref, ht_ref = plain()
rows = []
if not CUDA:  # the segmentation against the plain split form, on the CPU's kernels
    for S in SEGS:
        o, ht = overlapped(S)
        print(f"cpu S {S}: |o - plain| {(o - o_ref).abs().max().item():.3g}, "
              f"|ht - plain| {(ht[0] - ht_ref[0]).abs().max().item():.3g}")
    sys.exit(0)
fla = BASELINES["fla"](entry, shape, inputs)
t_fla = time_calls([fla], "cuda")
t_plain = time_calls([plain], "cuda")
for S in SEGS:
    o, ht = overlapped(S)
    torch.cuda.synchronize()
    err_o = (o.float() - o_ref.float()).abs().max().item()
    err_h = (ht[0].float() - ht_ref[0].float()).abs().max().item()
    t = time_calls([lambda: overlapped(S)], "cuda")
    rows.append({"segments": S, "ms": t * 1e3, "max_abs_diff_o": err_o, "max_abs_diff_ht": err_h})
    print(f"{op} T {T} S {S}: {t * 1e3:.3f} ms (plain {t_plain * 1e3:.3f}, fla {t_fla * 1e3:.3f}); "
          f"|o - plain| {err_o:.3g}, |ht - plain| {err_h:.3g}", flush=True)


def trace(fn):
    """The kernels of one call (after a warm call) from torch.profiler: start, duration (us) and stream
    of each, in start order, and the call's span against the sum of its kernels (overlap when less)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    path = os.path.join(os.environ.get("OUT", "."), "trace.tmp.json")
    prof.export_chrome_trace(path)
    ev = [e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel"]
    os.remove(path)
    ev.sort(key=lambda e: e["ts"])
    t0 = ev[0]["ts"]
    ks = [{"name": e["name"][:40], "start_us": round(e["ts"] - t0, 1), "us": round(e["dur"], 1),
           "stream": e.get("args", {}).get("stream")} for e in ev]
    span = max(e["ts"] + e["dur"] for e in ev) - t0
    return {"span_us": round(span, 1), "sum_us": round(sum(e["dur"] for e in ev), 1),
            "streams": sorted({k["stream"] for k in ks}, key=str), "kernels": ks}


traces = {"plain": trace(plain), **{f"S{S}": trace(lambda: overlapped(S)) for S in SEGS[:2]}}
for name, tr in traces.items():
    print(f"trace {name}: span {tr['span_us']} us, kernels' sum {tr['sum_us']} us, streams {tr['streams']}")
    for k in tr["kernels"]:
        print("   ", k)
out = {"provenance": provenance("cuda"), "method": __doc__, "op": op, "B": B, "T": T, "H": H, "D": D,
       "plain_ms": t_plain * 1e3, "fla_ms": t_fla * 1e3, "rows": rows,
       "traces": traces}
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "overlap_probe.json"), "w"), indent=1)
