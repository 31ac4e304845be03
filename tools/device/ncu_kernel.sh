#!/bin/bash
# Nsight Compute on one of our kernels of one call of a linear op (tools/device/nvtx_call.py), with its
# warp stall sampling by source line and instruction mix: OP, BT (B:T), SKIP (our kernels launched before
# it in the call: 2 for the delta rules' prep), DIR (the checkout to run, default this one).
# Report under $OUT/ncu-kernel-<op>-<B>x<T>-<SKIP>-<tag>.txt   (TAG names the checkout)
export PYTHONUNBUFFERED=1
OP=${OP:-gated_delta_rule}; BT=${BT:-8:2048}; SKIP=${SKIP:-2}; DIR=${DIR:-$PWD}; TAG=${TAG:-this}
SECTIONS="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section InstructionStats --section SourceCounters --section MemoryWorkloadAnalysis"
f=$OUT/ncu-kernel-$OP-${BT/:/x}-$SKIP-$TAG.txt
(cd $DIR && PYTHONPATH=$DIR:/tmp/fla:$PYTHONPATH timeout ${T_NCU:-200} ncu --clock-control none --nvtx --nvtx-include "prof/" \
   --launch-skip $SKIP --launch-count 1 $SECTIONS --print-details all \
   python3 tools/device/nvtx_call.py $OP $BT > $f 2>&1)
echo "$TAG rc $?: $(grep -c 'main_kernel' $f) kernel lines"
