#!/usr/bin/env bash
# ./run.sh demo   compile every op for this machine (CUDA if present, else CPU), check and time it
# ./run.sh test   the test suite (what CI runs)
# Each installs what it needs first: torch if missing (the CPU build of 2.13.0 where pip finds it on
# this disk), then tvm-attn with its pinned TVM (apache-tvm 0.27.0.post1, apache-tvm-ffi 0.1.14.post1).
set -euo pipefail
cd "$(dirname "$0")"
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q "torch==2.13.0"
fi
python3 -m pip install -q -e ".[test]"
case "${1:-}" in
  demo) exec python3 -m tvm_attn.cli demo ;;
  test) exec python3 -m pytest -q tests ;;
  *) echo "usage: ./run.sh demo | test" >&2; exit 2 ;;
esac
