#!/usr/bin/env bash
# The paper's supervised baselines on PASCAL VOC 2012 (spec section 6): DeepLabV2-ResNet101 from
# the COCO weights (run prepare_coco.sh first), three random splits each, plus valtiny variants of
# the smallest split (chosen on valtiny, then scored on val by fs_voc_106-<set>_valtiny_eval). A run
# whose results file exists is skipped, so rerunning resumes the list. Extra arguments are passed to
# every run (e.g. --data-root /data/VOC2012 --workers 8). Several GPUs: LAUNCH="torchrun
# --nproc_per_node 4" ./fs_voc_all.sh
set -euo pipefail
source "$(dirname "$0")/run_once.sh"

run() {  # run <exp-name> <flags...>
  run_once "$1" --state=2 --dataset=voc --continue-from=voc_coco_resnet101.pt --coco --mixed-precision "${@:2}"
}

# split  epochs  validate-every
while read -r split epochs val_steps; do
  sets="0 1 2"
  [ "$split" = 1 ] && sets="0"   # the full set has one "split"
  for set_id in $sets; do
    run "fs_voc_${split}-${set_id}" --split="$split" --sets-id="$set_id" \
      --init-epochs="$epochs" --val-num-steps="$val_steps" "$@"
  done
done <<'TABLE'
1 30 1000
4 60 500
8 85 350
20 134 220
50 212 140
106 300 100
TABLE

for set_id in 0 1 2; do
  run "fs_voc_106-${set_id}_valtiny" --split=106 --sets-id="$set_id" --init-epochs=300 \
    --val-num-steps=100 --valtiny "$@"
  run_once "fs_voc_106-${set_id}_valtiny_eval" --state=3 --dataset=voc \
    --continue-from="fs_voc_106-${set_id}_valtiny.pt" --coco --mixed-precision "$@"
done
