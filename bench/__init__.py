"""The benchmark driver of tvm-attn (shipped as tvm_attn.bench)."""
