#!/bin/bash
# A/B of our kernels in one call: this checkout (A) against another export of the code (B) in $AB_DIR
# (default .ab; made here with `git archive <rev> | tar -x -C .ab` and carried: it is ignored), each side
# in its own process (the kernel cache keys hold the source digest, so each compiles its own), alternated
# $ROUNDS times so drift hits both. Per-kernel GPU times (kernel_breakdown.py, fla left out) under
# $OUT/ab/{A,B}-<round>.json, then each kernel's median over the rounds, A against B; the per-round files
# end up in one archive, $OUT/ab-<time>.tar.gz.
#   source tools/device/fla_env.sh; ROUNDS=2 bash tools/device/ab_breakdown.sh simple_gla,gla 2:8192
AB_DIR=$PWD/${AB_DIR:-.ab}
ROUNDS=${ROUNDS:-2}
mkdir -p $OUT/ab
for r in $(seq 1 $ROUNDS); do
  for side in A B; do
    dir=$PWD
    [ $side = B ] && dir=$AB_DIR
    (cd $dir && OUT=$OUT/ab FLA=0 PYTHONPATH=$dir:/tmp/fla:$PYTHONPATH python3 tools/device/kernel_breakdown.py "$@" \
       > $OUT/ab/$side-$r.log 2>&1; mv $OUT/ab/kernel_breakdown.json $OUT/ab/$side-$r.json)
    echo "$side round $r: $(grep -c ' ours: ' $OUT/ab/$side-$r.log) rows"
  done
done
python3 - $OUT/ab $ROUNDS <<'PY'
import json, statistics, sys
from pathlib import Path
d, rounds = Path(sys.argv[1]), int(sys.argv[2])
runs = {s: [json.loads((d / f"{s}-{r}.json").read_text()) for r in range(1, rounds + 1)
            if (d / f"{s}-{r}.json").exists()] for s in "AB"}
for i, row in enumerate(runs["A"][0]["rows"] if runs["A"] else []):
    # (each side its own kernel count: a change may add or drop a launch)
    med = {s: [statistics.median(run["rows"][i]["ours"][k]["us"] for run in runs[s] if i < len(run["rows"]))
               for k in range(len(runs[s][0]["rows"][i]["ours"]))] for s in "AB" if runs[s]}
    print(f"{row['op']} ({row['B']}, {row['T']}) us per kernel, A: {[round(x, 1) for x in med['A']]}"
          + (f"  B: {[round(x, 1) for x in med['B']]}" if "B" in med else ""))
PY
# one archive of the per-round files (the device tool returns a limited number of files per call)
(cd $OUT/ab && tar -czf ../ab-$(date +%H%M%S).tar.gz *.json *.log && rm -f *.json *.log)
