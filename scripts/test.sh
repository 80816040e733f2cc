#!/usr/bin/env bash
# `make test` after the image and the secrets: lint and the unit tests side
# by side with the molecule scenarios given as arguments, which start at once.
#
# Lint and the unit tests are about 80 s, most of it ansible-lint's CPU; run
# before the scenarios they delayed both molecule paths by as much, while
# the scenarios' first minutes (containers, apt, pip, services starting)
# leave this 2-core machine a third idle (docs/testing.md).
# Their output goes to artifacts/lint-unit.log. When they fail, the
# scenarios are stopped (their process group) and destroyed, and the log is
# printed: a red lint still ends the run in a minute or two, not after the
# scenarios. (`logging`, the last, has not started by then.)
set -euo pipefail
cd "$(dirname "$0")/.."
(( $# )) || { echo "usage: $0 SCENARIO..." >&2; exit 2; }
mkdir -p artifacts
log=artifacts/lint-unit.log

set -m   # the scenarios get a process group of their own, to be stopped as one
scripts/molecule-scenarios.sh "$@" &
scenarios=$!
set +m

if ! make --no-print-directory lint unit >"$log" 2>&1; then
  echo "test: lint or the unit tests FAILED at $(date +%T); stopping the molecule scenarios. $log:"
  cat "$log"
  kill -TERM -- "-$scenarios" 2>/dev/null || true
  wait "$scenarios" || true
  for scenario in "$@"; do
    molecule destroy --scenario-name "$scenario" >/dev/null 2>&1 || echo "test: destroying $scenario failed" >&2
  done
  exit 1
fi
echo "test: lint and the unit tests passed at $(date +%T): $(grep -E '^[0-9]+ passed' "$log" | tail -n 1) ($log)"
wait "$scenarios"
