#!/usr/bin/env bash
# DST-CBC on PASCAL VOC 1/106 (spec section 8), three random splits. Each of the five rounds runs
# as its own process (--round), starting from the previous round's best checkpoint, so a crash
# loses at most one round; a round whose results file exists is skipped when the script is rerun,
# and a killed round is resumed. Needs the supervised baselines fs_voc_106-<set>.pt and
# fs_voc_106-<set>_valtiny.pt (fs_voc_all.sh). Extra arguments go to every run (e.g. --data-root
# /data/VOC2012). Several GPUs: LAUNCH="torchrun --nproc_per_node 4" ./ss_voc_example.sh
#
# The valtiny chains choose their checkpoints on the small valtiny list; their final checkpoint is
# then scored on val (ss_voc_106-<set>_valtiny_eval): selected on valtiny, reported on val.
set -euo pipefail
source "$(dirname "$0")/run_once.sh"
DST_CBC=(--gamma=9 --dataset=voc --val-num-steps=1000 --init-epochs=0 --st-epochs 6 6 6 6 6
         --st-lr=0.002 --split=106 --coco --mixed-precision)

for set_id in 0 1 2; do
  run_rounds "ss_voc_106-${set_id}" "fs_voc_106-${set_id}.pt" 5 "${DST_CBC[@]}" --sets-id="$set_id" "$@"
  echo "ss_voc_106-${set_id}: best checkpoint $LAST_ROUND"
done

for set_id in 0 1 2; do
  run_rounds "ss_voc_106-${set_id}_valtiny" "fs_voc_106-${set_id}_valtiny.pt" 5 "${DST_CBC[@]}" \
    --sets-id="$set_id" --valtiny "$@"
  run_once "ss_voc_106-${set_id}_valtiny_eval" --state=3 --dataset=voc --continue-from="$LAST_ROUND" \
    --coco --mixed-precision "$@"
done
