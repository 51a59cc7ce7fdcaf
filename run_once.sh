# Sourced by the experiment scripts (fs_voc_all.sh, fs_city_all.sh, ss_voc_example.sh,
# ss_voc_all.sh, ss_city_all.sh).
# run_once <exp-name> <main.py flags...>: skip a finished run (its logs/<exp-name>/results.json
# exists), resume a killed one (its logs/<exp-name>/last.pt exists), else start it.
# The command is `$PYTHON main.py ...` (PYTHON defaults to python3), or, when LAUNCH is set,
# `$LAUNCH /abs/path/main.py ...`, e.g. LAUNCH="torchrun --nproc_per_node 4" ./ss_voc_example.sh
# (LAUNCH is split on blanks: its words cannot themselves hold spaces).
PYTHON=${PYTHON:-python3}
MAIN="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/main.py"

run_once() {
  local name=$1; shift
  if [ -f "logs/$name/results.json" ]; then echo "skip $name (finished)"; return; fi
  local resume=() launcher=("$PYTHON")
  [ -f "logs/$name/last.pt" ] && resume=(--resume)
  [ -n "${LAUNCH:-}" ] && read -r -a launcher <<< "$LAUNCH"
  "${launcher[@]}" "$MAIN" --exp-name="$name" "$@" "${resume[@]}"
}

# run_rounds <prefix> <start checkpoint> <rounds> <main.py flags...>: DST-CBC (state 1) with each
# round as its own process, <prefix>_round1 .. <prefix>_round<rounds>, round R continuing from
# round R-1's best checkpoint (round 1 from <start checkpoint>), so a crash loses at most one
# round. The flags must hold a --st-epochs list of <rounds> entries.
# run_rounds then sets LAST_ROUND to the last round's checkpoint.
run_rounds() {
  local prefix=$1 previous=$2 rounds=$3 round; shift 3
  for round in $(seq 1 "$rounds"); do
    run_once "${prefix}_round${round}" --state=1 --iters="$rounds" --round="$round" \
      --continue-from="$previous" "$@"
    previous="${prefix}_round${round}.pt"
  done
  LAST_ROUND=$previous
}
