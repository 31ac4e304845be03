"""``tvm-attn demo``: compile every registered op for this machine (CUDA when a GPU is present, else
the CPU), run it on its quick shapes, check it against the fp32 PyTorch reference and print a table."""
from __future__ import annotations

import argparse
import time


def run_demo(device: str | None = None) -> int:
    import torch

    from tvm_attn import registry
    from tvm_attn.bench import driver

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"tvm-attn demo on {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"{'op':<20} {'shape':<46} {'dtype':<9} {'build+run s':>11} {'max err':>9} {'bound':>9}  ok   "
          f"{'ms':>8}")
    failures = 0
    for entry in registry.all_ops():
        for shape in entry.shapes.get("quick", ()):
            for dtype in entry.dtypes[device]:
                inputs = entry.make_inputs(shape, getattr(torch, dtype), device)
                t = time.perf_counter()
                outputs = entry.run(inputs, shape)
                if device == "cuda":
                    torch.cuda.synchronize()
                first = time.perf_counter() - t
                chk = driver.check(entry, shape, inputs, outputs)
                ms = driver.time_calls([lambda: entry.run(inputs, shape)], device, min_s=0.1) * 1e3
                failures += not chk["ok"]
                print(f"{entry.name:<20} {driver._shape_str(shape):<46} {dtype:<9} {first:11.2f} "
                      f"{chk['max_err']:9.2e} {chk['bound']:9.2e}  {'yes' if chk['ok'] else 'NO ':<4} {ms:8.3f}")
    print("all ops match the reference" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="compile, run and check every op on this machine")
    d.add_argument("--device", choices=("cpu", "cuda"), default=None)
    d.set_defaults(func=lambda a: run_demo(a.device))
