"""Names for GPUs: the key that tuning records and benchmark results are filed under."""
from __future__ import annotations

import re
import subprocess


def gpu_key(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100``; ``NVIDIA H100 PCIe`` -> ``h100-pcie``; ``NVIDIA A100-SXM4-40GB``
    -> ``a100``. Model token, plus the form factor when it is not the SXM part."""
    low = name.lower().replace("nvidia", "").strip()
    m = re.search(r"\b([a-z]{1,3}\d{2,4}[a-z]?)\b", low.replace("-", " "))
    model = m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", low).strip("-")
    for form in ("pcie", "nvl"):
        if form in low:
            return f"{model}-{form}"
    return model


def card_info(index: int = 0) -> dict:
    """Card name, key, compute capability, driver, SM count and L2 size of a CUDA device."""
    import torch

    props = torch.cuda.get_device_properties(index)
    info = {"name": props.name, "key": gpu_key(props.name), "capability": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count, "l2_bytes": getattr(props, "L2_cache_size", None),
            "memory_bytes": props.total_memory}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,power.limit,clocks.max.sm",
                              "--format=csv,noheader", f"--id={index}"], capture_output=True, text=True, timeout=10)
        driver, power, clock = (s.strip() for s in out.stdout.strip().split(","))
        info.update(driver=driver, power_limit=power, max_sm_clock=clock)
    except (OSError, ValueError, subprocess.SubprocessError):
        info["driver"] = None
    return info
