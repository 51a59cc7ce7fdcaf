#!/usr/bin/env bash
# DST-CBC on PASCAL VOC 1/106 (spec section 8), three random splits. Each of the five rounds runs
# as its own process (--round), starting from the previous round's best checkpoint, so a crash
# loses at most one round; a round whose results file exists is skipped when the script is rerun,
# and a killed round is resumed. Needs the supervised baselines fs_voc_106-<set>.pt
# (fs_voc_all.sh). Extra arguments go to every run (e.g. --data-root /data/VOC2012).
set -euo pipefail
source "$(dirname "$0")/run_once.sh"
ROUNDS=5

for set_id in 0 1 2; do
  previous="fs_voc_106-${set_id}.pt"
  for round in $(seq 1 "$ROUNDS"); do
    name="ss_voc_106-${set_id}_round${round}"
    run_once "$name" --gamma=9 --dataset=voc --val-num-steps=1000 --state=1 --iters="$ROUNDS" \
      --round="$round" --init-epochs=0 --st-epochs 6 6 6 6 6 --st-lr=0.002 --split=106 \
      --sets-id="$set_id" --continue-from="$previous" --coco --mixed-precision "$@"
    previous="$name.pt"
  done
  echo "ss_voc_106-${set_id}: best checkpoint $previous"
done
