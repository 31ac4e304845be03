#!/bin/bash
# tune one linear op's split kernels on this card; records in the user root (~/.cache/tvm_attn/tuning_logs,
# kept while the machine stays warm, so a later bench call uses them) and tarred to $OUT/records.tgz
export PYTHONUNBUFFERED=1 TVM_ATTN_GIT=${GITREV:-unknown} PYTHONPATH=$PWD:$PYTHONPATH
OP=${OP:-gated_delta_rule}
TILING_ARG=${TILING:+--tiling $TILING}
T0=$(date +%s)
timeout ${TIMEOUT:-450} python3 -m tvm_attn.cli tune --op $OP --part ${PARTS:-state} $TILING_ARG \
  --trials ${TRIALS:-18} > $OUT/tune.log 2>&1
echo "tune rc $? at $(( $(date +%s) - T0 )) s"
tar -C ~/.cache/tvm_attn -czf $OUT/records.tgz --exclude='.ms_logs' --exclude='.run-*' tuning_logs 2>/dev/null
grep -v "^\[#\|^\[\." $OUT/tune.log | tail -12
