#!/usr/bin/env bash
# The paper's supervised baselines on Cityscapes (spec section 6): lr 0.004, COCO weights (run
# prepare_coco.sh first), three random splits each, plus valtiny variants of the smallest split
# (chosen on valtiny, then scored on val by fs_city_30-<set>_valtiny_eval). A run whose results
# file exists is skipped. Extra arguments go to every run. Several GPUs: LAUNCH="torchrun
# --nproc_per_node 4" ./fs_city_all.sh
set -euo pipefail
source "$(dirname "$0")/run_once.sh"

run() {  # run <exp-name> <flags...>
  run_once "$1" --state=2 --dataset=city --lr=0.004 \
    --continue-from=city_coco_resnet101.pt --coco --mixed-precision "${@:2}"
}

# split  epochs  validate-every
while read -r split epochs val_steps; do
  sets="0 1 2"
  [ "$split" = 1 ] && sets="0"
  for set_id in $sets; do
    run "fs_city_${split}-${set_id}" --split="$split" --sets-id="$set_id" \
      --init-epochs="$epochs" --val-num-steps="$val_steps" "$@"
  done
done <<'TABLE'
1 60 1000
4 120 500
8 170 350
30 330 100
TABLE

for set_id in 0 1 2; do
  run "fs_city_30-${set_id}_valtiny" --split=30 --sets-id="$set_id" --init-epochs=330 \
    --val-num-steps=100 --valtiny "$@"
  run_once "fs_city_30-${set_id}_valtiny_eval" --state=3 --dataset=city \
    --continue-from="fs_city_30-${set_id}_valtiny.pt" --coco --mixed-precision "$@"
done
