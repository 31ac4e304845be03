"""python -m bench ... : the same as ``tvm-attn bench``."""
from tvm_attn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *__import__("sys").argv[1:]]))
