#!/usr/bin/env bash
# DST-CBC on PASCAL VOC 2012 for every labeled fraction of the paper (1/106, 1/50, 1/20, 1/8,
# 1/4), three random splits each, from the supervised baselines fs_voc_<S>-<set>.pt
# (fs_voc_all.sh). Each of the five rounds runs as its own process, ss_voc_<S>-<set>_round<R>,
# continuing from round R-1's best checkpoint; finished runs are skipped and a killed one resumed
# when the script is rerun. Extra arguments go to every run (e.g. --data-root /data/VOC2012).
# Several GPUs: LAUNCH="torchrun --nproc_per_node 4" ./ss_voc_all.sh
#
# ASSUMPTION: the paper publishes self-training settings only for VOC 1/106 (gamma 9, five rounds
# of 6 epochs, st-lr 0.002, validation every 1000 steps); we use them for every fraction.
# The 1/106 runs have the names and settings of ss_voc_example.sh, so either script reuses the
# other's finished runs. Only 1/106 has valtiny baselines: its valtiny chains (selection on
# valtiny) end with an evaluation of the final checkpoint on val, ss_voc_106-<set>_valtiny_eval.
set -euo pipefail
source "$(dirname "$0")/run_once.sh"
DST_CBC=(--gamma=9 --dataset=voc --val-num-steps=1000 --init-epochs=0 --st-epochs 6 6 6 6 6
         --st-lr=0.002 --coco --mixed-precision)

for split in 106 50 20 8 4; do
  for set_id in 0 1 2; do
    run_rounds "ss_voc_${split}-${set_id}" "fs_voc_${split}-${set_id}.pt" 5 "${DST_CBC[@]}" \
      --split="$split" --sets-id="$set_id" "$@"
  done
done

for set_id in 0 1 2; do
  run_rounds "ss_voc_106-${set_id}_valtiny" "fs_voc_106-${set_id}_valtiny.pt" 5 "${DST_CBC[@]}" \
    --split=106 --sets-id="$set_id" --valtiny "$@"
  run_once "ss_voc_106-${set_id}_valtiny_eval" --state=3 --dataset=voc --continue-from="$LAST_ROUND" \
    --coco --mixed-precision "$@"
done
