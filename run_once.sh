# Sourced by the experiment scripts (fs_voc_all.sh, fs_city_all.sh, ss_voc_example.sh).
# run_once <exp-name> <main.py flags...>: skip a finished run (its logs/<exp-name>/results.json
# exists), resume a killed one (its logs/<exp-name>/last.pt exists), else start it.
PYTHON=${PYTHON:-python3}
MAIN="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/main.py"

run_once() {
  local name=$1; shift
  if [ -f "logs/$name/results.json" ]; then echo "skip $name (finished)"; return; fi
  local resume=()
  [ -f "logs/$name/last.pt" ] && resume=(--resume)
  "$PYTHON" "$MAIN" --exp-name="$name" "$@" "${resume[@]}"
}
