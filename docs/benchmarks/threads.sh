#!/usr/bin/env bash
# Concurrent training on one machine: N `kpiguard train` processes at once, against one alone.
#
#   docs/benchmarks/threads.sh                       # N = 1 2 4, lstm_forecaster, params.yaml defaults
#   COUNTS="1 2" DETECTOR=dense_autoencoder docs/benchmarks/threads.sh -S train.max_epochs=5
#
# The DVC workspace flow on the default synthetic data, in a temp dir: ingest, validate and windows
# run once (every paths.* redirected there with -S), then for each N, N trains start together, each
# writing its own artifacts and report dirs. Prints one line per N: wall seconds, the ratio to one
# run alone, and the threads each run reported (reports/train/<detector>.json). Arguments after the
# options are passed to every `kpiguard train` (e.g. -S train.threads=1). The environment passes
# through, so KPIGUARD_TASKS_PER_MACHINE=2 or OMP_WAIT_POLICY=ACTIVE compare policies; PYTHONPATH
# picks the code (a checkout of another commit measures the code from before).
set -euo pipefail

COUNTS=${COUNTS:-"1 2 4"}
DETECTOR=${DETECTOR:-lstm_forecaster}
PARAMS=${PARAMS:-params.yaml}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kpiguard-threads.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

paths=()
for key in raw validated quarantine validation_report windows evaluation plots register_report; do
  paths+=(-S "paths.$key=$WORK/shared/$key")
done

now() { date +%s.%N; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; uptime:$(uptime | sed 's/.*load average/ load average/')"
echo "# detector $DETECTOR; extra train args: ${*:-none}"
for stage in ingest validate windows; do
  kpiguard "$stage" --params "$PARAMS" "${paths[@]}" >/dev/null
done

alone=""
for n in $COUNTS; do
  start=$(now)
  pids=()
  for i in $(seq 1 "$n"); do
    out="$WORK/n$n/run$i"
    kpiguard train --params "$PARAMS" --detector "$DETECTOR" --no-progress "${paths[@]}" \
      -S "paths.artifacts=$out/artifacts" -S "paths.train_reports=$out/reports" "$@" \
      >"$WORK/n$n-run$i.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || { echo "a run failed:"; cat "$WORK"/n"$n"-run*.log; exit 1; }
  done
  wall=$(echo "$(now) - $start" | bc)
  alone=${alone:-$wall}
  runs=$(python3 -c 'import json, sys
for f in sys.argv[1:]:
    r = json.load(open(f))
    print("%.1fs/%sep/%st" % (r["train_seconds"], r["epochs"], r.get("threads", "?")), end=" ")' \
    "$WORK"/n"$n"/run*/reports/"$DETECTOR".json)
  printf 'N=%s  wall %6.1f s  ratio %4.2f  runs: %s\n' "$n" "$wall" "$(echo "$wall / $alone" | bc -l)" "$runs"
done
echo "# uptime at the end:$(uptime | sed 's/.*load average/ load average/')"
