#!/bin/bash
# SASS instruction mix of one split kernel (PART, OP, CHUNK; DIR: the checkout to build), from cuobjdump,
# under $OUT/sass-<part>-<tag>.txt (TAG names the checkout)
PART=${PART:-prep}; OP=${OP:-gated_delta_rule}; CHUNK=${CHUNK:-64}; DIR=${DIR:-$PWD}; TAG=${TAG:-this}
f=$OUT/sass-$PART-$TAG
(cd $DIR && PYTHONPATH=$DIR:$PYTHONPATH python3 - "$f.cubin" <<PY
import sys
from tvm_attn import _tvm
from tvm_attn.ops.linear.build import LinearSpec
from tvm_attn.ops.linear.cuda import build_cuda
src = _tvm.cuda_source(build_cuda(LinearSpec("$OP", "chunk", 128, 128, "bfloat16", False, $CHUNK, "$PART"), "sm_90a"))
open(sys.argv[1], "wb").write(_tvm.compile_cuda_source(src, "sm_90a", "cubin"))
PY
)
cuobjdump -sass $f.cubin > $f.sass
grep -oE '^\s+/\*[0-9a-f]{4,6}\*/\s+(@!?U?P[0-9T] )?[A-Z0-9_]+(\.[A-Z0-9_]+)*' $f.sass | awk '{print $NF}' | sed 's/\..*//' \
  | sort | uniq -c | sort -rn > $f.txt
echo "$TAG $PART: $(awk '{s+=$1} END {print s}' $f.txt) instructions; $(head -8 $f.txt | tr -s ' ' | tr '\n' ' ')"
