#!/bin/bash
# Short peak-lr sweep of the V2 distillation recipe (issue 14): one-cycle, bf16 auto, batch 16, 128-px crops, 200 steps from scratch.
export OMP_NUM_THREADS=1
cd /work/main
for lr in 3e-4 1e-3 3e-3; do
  out=/work/runs/sweep/lr_$lr.pth
  [ -f $out ] || .venv/bin/efficientad-distill-teacher --images ../shared/data/natural_images/images --output $out \
    --backbone-weights lite0 --crop-size 128 --steps 200 --batch-size 16 --lr $lr --schedule one_cycle \
    --precision auto --statistics-images 200 --num-workers 0 --seed 0 > /work/runs/sweep/lr_$lr.log 2>&1
done
.venv/bin/efficientad-probe-features ../shared/data/deeppcb_mini/pcb --features untrained /work/runs/sweep/lr_3e-4.pth /work/runs/sweep/lr_1e-3.pth /work/runs/sweep/lr_3e-3.pth --seed 0 --output /work/runs/sweep/probe_pcb.json > /work/runs/sweep/probe_pcb.log 2>&1
echo done > /work/runs/sweep/DONE
