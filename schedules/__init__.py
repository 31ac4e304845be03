"""Schedules of tvm-attn: per-family design spaces for CUDA tensor cores and the CPU (shipped as
``tvm_attn.schedules``)."""
