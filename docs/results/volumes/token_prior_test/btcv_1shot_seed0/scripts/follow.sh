#!/bin/bash
# token pass on each remaining test volume as soon as the plain pass has written it (parts c, d, e, ...)
F=/work/runs/vol_s25/btcv/1shot/seed0/blo-sam
while [ ! -s /work/runs/tokens_b.out ]; do sleep 10; done
parts=(c d e f g)
n=0
for v in 25 26 27 28 29; do
  while [ ! -f $F/pred/btcv_sabs_$v.nii.gz ]; do sleep 10; done
  nice /work/main/.venv/bin/python /work/runs/pass_subset.py $F pred_tokens ${parts[$n]} btcv_sabs_$v
  n=$((n+1))
done
