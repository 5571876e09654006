# Shared by the comparison scripts (examples/*/compare.sh): runs one function per method, JOBS at a
# time, and echoes each running method's latest progress line as it appears. Source it, then
#   compare_run_queue "fzoo mezo adamezo adam" JOBS OUT run_method
# where `run_method METHOD` writes OUT/METHOD/log.txt and OUT/METHOD/summary.json. Fails, naming
# the log, when a method wrote no summary.json.
compare_run_queue() {
  local methods="$1" jobs="$2" out="$3" run="$4" method line
  local queue=($methods)
  declare -A shown=()
  while (( ${#queue[@]} )) || [[ -n "$(jobs -rp)" ]]; do
    while (( ${#queue[@]} )) && (( $(jobs -rp | wc -l) < jobs )); do
      "$run" "${queue[0]}" &
      queue=("${queue[@]:1}")
    done
    sleep 3
    for method in $methods; do
      line="$(grep -h ' | fp ' "$out/$method/log.txt" 2>/dev/null | tail -n 1 || true)"
      if [[ -n "$line" && "$line" != "${shown[$method]:-}" ]]; then
        echo "  [$method]${line#  }"
        shown[$method]="$line"
      fi
    done
  done
  wait
  for method in $methods; do
    [[ -f "$out/$method/summary.json" ]] || { echo "compare: $method wrote no summary.json; see $out/$method/log.txt" >&2; return 1; }
  done
}
