#!/usr/bin/env bash
# DST-CBC on Cityscapes for every labeled fraction of the paper (1/30, 1/8, 1/4), three random
# splits each, from the supervised baselines fs_city_<S>-<set>.pt (fs_city_all.sh). Each of the
# five rounds runs as its own process, ss_city_<S>-<set>_round<R>, continuing from round R-1's
# best checkpoint; finished runs are skipped and a killed one resumed when the script is rerun.
# Extra arguments go to every run (e.g. --data-root /data/cityscapes).
# Several GPUs: LAUNCH="torchrun --nproc_per_node 4" ./ss_city_all.sh
#
# ASSUMPTION: the paper publishes no Cityscapes self-training settings; we use its VOC 1/106 ones
# (gamma 9, five rounds of 6 epochs, st-lr 0.002, validation every 1000 steps) for every fraction.
# Only 1/30 has valtiny baselines: its valtiny chains (selection on valtiny) end with an
# evaluation of the final checkpoint on val, ss_city_30-<set>_valtiny_eval.
set -euo pipefail
source "$(dirname "$0")/run_once.sh"
DST_CBC=(--gamma=9 --dataset=city --val-num-steps=1000 --init-epochs=0 --st-epochs 6 6 6 6 6
         --st-lr=0.002 --coco --mixed-precision)

for split in 30 8 4; do
  for set_id in 0 1 2; do
    run_rounds "ss_city_${split}-${set_id}" "fs_city_${split}-${set_id}.pt" 5 "${DST_CBC[@]}" \
      --split="$split" --sets-id="$set_id" "$@"
  done
done

for set_id in 0 1 2; do
  run_rounds "ss_city_30-${set_id}_valtiny" "fs_city_30-${set_id}_valtiny.pt" 5 "${DST_CBC[@]}" \
    --split=30 --sets-id="$set_id" --valtiny "$@"
  run_once "ss_city_30-${set_id}_valtiny_eval" --state=3 --dataset=city --continue-from="$LAST_ROUND" \
    --coco --mixed-precision "$@"
done
