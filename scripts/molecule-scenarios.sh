#!/usr/bin/env bash
# `make molecule`: runs the molecule scenarios given as arguments, each the
# full `molecule test` sequence (destroy, syntax, create, prepare, converge,
# idempotence, verify, destroy).
#
# Overlapped on purpose: the first scenario (the biggest, `default`) runs in
# the foreground; the others run one after another in the background, from
# the start of its converge to the end of its verify (see below).
# Each scenario has its own containers, network, CA and artifacts directory,
# so they share nothing but the Docker engine and the apt cache. The
# background scenarios' output goes to artifacts/<scenario>/molecule.log and
# its tail is printed here when one fails.
#
# MOLECULE_SEQUENTIAL=1 runs them one after another instead.
#
# A scenario whose molecule driver is unmanaged (logging) is the production
# path: scripts/ssh-scenario.sh runs it as an unprivileged controller account
# over SSH, not as root over `docker exec`.
set -euo pipefail
cd "$(dirname "$0")/.."
(( $# )) || { echo "usage: $0 SCENARIO..." >&2; exit 2; }

unmanaged() {
  python3 -c 'import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
sys.exit(0 if (config.get("driver") or {}).get("options", {}).get("managed", True) is False else 1)' "molecule/$1/molecule.yml"
}

scenario_test() {
  if unmanaged "$1"; then
    scripts/ssh-scenario.sh "$1"
  else
    molecule test --scenario-name "$1"
  fi
}

if [[ -n ${MOLECULE_SEQUENTIAL:-} || $# -eq 1 ]]; then
  for scenario in "$@"; do scenario_test "$scenario"; done
  exit 0
fi

first=$1
shift
rest=("$@")

stamped() {
  python3 -u -c 'import sys, time
for line in sys.stdin:
    sys.stdout.write(time.strftime("%H:%M:%S ") + line)'
}

one_in_background() {
  local scenario=$1
  mkdir -p "artifacts/$scenario"
  echo "molecule: $scenario started in the background at $(date +%T)"
  # Each line stamped with the time: the log is read after the fact.
  if ! scenario_test "$scenario" 2>&1 | stamped >"artifacts/$scenario/molecule.log"; then
    echo "molecule: $scenario FAILED at $(date +%T); the end of artifacts/$scenario/molecule.log:"
    tail -n 250 "artifacts/$scenario/molecule.log"
    return 1
  fi
  echo "molecule: $scenario passed at $(date +%T) (artifacts/$scenario/molecule.log)"
}

# The other scenarios one after another: side by side with default's verify
# they loaded this 2-core machine to a load average of 14 and a pool missed
# `celery inspect`'s 10 s timeout.
background() {
  local scenario
  for scenario in "${rest[@]}"; do
    one_in_background "$scenario" || return 1
  done
}

status=0

# The others start with the first scenario's converge, not after it: a fresh
# converge keeps this 2-core machine only 51 to 66% busy (vmstat every 30 s,
# 2026-12-05: it waits on apt, pip and services starting), and the others,
# one after another, were the critical path, ending 7 to 8 minutes after the
# first one's verify. Starting them after its converge instead was tried
# (2026-12-03): its idempotence run and their converge then kept both cores
# busy (vmstat: 95 to 98% for 5 minutes), the idempotence run took 4m48s
# instead of 2m30s, and broker_cluster reached its verify no sooner.
molecule destroy --scenario-name "$first"
molecule syntax --scenario-name "$first"
background &
bg_pid=$!
if molecule converge --scenario-name "$first" && molecule idempotence --scenario-name "$first"; then
  molecule verify --scenario-name "$first" || status=1
else
  status=1
fi
molecule destroy --scenario-name "$first" || status=1
wait "$bg_pid" || status=1
exit "$status"
