#!/bin/bash
# Nsight Compute on one call of a linear op, ours and fla's (tools/device/nvtx_call.py), at B:T (env OP,
# BT); reports under $OUT/ncu-<op>-<B>x<T>-{ours,fla}.txt. Needs a machine whose runtime lets ncu read
# the counters (../.library/device/KINDS.md); the clocks are left alone.
export PYTHONUNBUFFERED=1
source tools/device/fla_env.sh
OP=${OP:-gated_delta_rule}; BT=${BT:-8:2048}
SECTIONS="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --section ComputeWorkloadAnalysis"
for who in ours fla; do
  f=$OUT/ncu-$OP-${BT/:/x}-$who.txt
  timeout ${T_NCU:-200} ncu --clock-control none --nvtx --nvtx-include "prof/" $SECTIONS \
    python3 tools/device/nvtx_call.py $OP $BT $([ $who = fla ] && echo fla) > $f 2>&1
  echo "$who rc $?: $(grep -c '^  [a-z_]*kernel\|main_kernel' $f) kernel lines"
done
