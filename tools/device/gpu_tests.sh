#!/bin/bash
# the linear ops' GPU tests in three shards (each compiles its own kernels), logs under $OUT
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH
python3 -m pytest -q tests/test_linear.py -k "cuda_against_reference and chunk" > $OUT/shardA.log 2>&1 &
A=$!
python3 -m pytest -q tests/test_linear.py -k "cuda_against_reference and not chunk" > $OUT/shardB.log 2>&1 &
B=$!
python3 -m pytest -q tests/test_linear.py -k "cuda_state_tiling or cuda_segmented or pipeline_depths or cuda_fused" > $OUT/shardC.log 2>&1 &
C=$!
rc=0
for p in $A $B $C; do wait $p || rc=1; done
for f in shardA shardB shardC; do echo "== $f"; tail -3 $OUT/$f.log; done
exit $rc
