#!/bin/bash
# precompile every split kernel of the linear ops (the on-disk kernel cache), then bench them at the
# anchors against fla; the results JSON is under $OUT/results/<card>/ (rewritten after every point)
export PYTHONUNBUFFERED=1 TVM_ATTN_GIT=${GITREV:-unknown}
source tools/device/fla_env.sh
OPS=${OPS:-linear_attention,simple_gla,gla,delta_rule,gated_delta_rule}
T0=$(date +%s)
python3 tools/device/precompile.py $OPS > $OUT/precompile.log 2>&1
echo "precompile done at $(( $(date +%s) - T0 )) s: $(tail -1 $OUT/precompile.log)"
ARGS=""; for o in $(echo $OPS | tr , ' '); do ARGS="$ARGS --op $o"; done
timeout ${T_BENCH:-480} python3 -m tvm_attn.cli bench $ARGS --shapes anchors --baselines fla --out $OUT/results > $OUT/bench.log 2>&1
echo "bench rc $? at $(( $(date +%s) - T0 )) s"
grep -v "Warning\|warn\|return cuda_plan" $OUT/bench.log | tail -20 | cut -c1-250
