#!/bin/bash
# Nsight Compute's per-instruction view of one of our kernels of one call of a linear op
# (tools/device/nvtx_call.py): every SASS instruction with its executed count and its warp stall samples
# by reason (the Source page, as CSV), and the stall totals. OP, BT (B:T), SKIP (our kernels launched
# before it in the call: 2 for the delta rules' state kernel, cumsum and prep), DIR (the checkout), TAG.
# Writes $OUT/ncu-source-<op>-<B>x<T>-<SKIP>-<tag>.{csv,txt}
export PYTHONUNBUFFERED=1
OP=${OP:-gated_delta_rule}; BT=${BT:-1:32768}; SKIP=${SKIP:-2}; DIR=${DIR:-$PWD}; TAG=${TAG:-this}
f=$OUT/ncu-source-$OP-${BT/:/x}-$SKIP-$TAG
rep=/tmp/ncu-source-$TAG-$$
(cd $DIR && PYTHONPATH=$DIR:/tmp/fla:$PYTHONPATH timeout ${T_NCU:-200} ncu --clock-control none --nvtx \
   --nvtx-include "prof/" --launch-skip $SKIP --launch-count 1 --section SourceCounters \
   --section WarpStateStats --section LaunchStats --section SpeedOfLight --import-source no -o $rep -f \
   python3 tools/device/nvtx_call.py $OP $BT > $f.txt 2>&1)
ncu -i $rep.ncu-rep --print-details all >> $f.txt 2>&1
ncu -i $rep.ncu-rep --page source --csv --print-source sass > $f.csv 2>> $f.txt
echo "$TAG: $(wc -l < $f.csv) source rows; $(grep -m1 -o 'Duration.*' $f.txt)"
