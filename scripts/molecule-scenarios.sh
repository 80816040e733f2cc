#!/usr/bin/env bash
# `make molecule`: runs the molecule scenarios given as arguments, each the
# full `molecule test` sequence (destroy, syntax, create, prepare, converge,
# idempotence, verify, destroy).
#
# Overlapped on purpose, as a pipeline: one converge at a time, the verifies
# side by side. The first scenario (the biggest, `default`) runs in the
# foreground; once its converge and idempotence are done, the next scenario
# starts in the background while default's verify runs; once that one is
# converged and idempotent, the one after it starts beside both verifies,
# and so on. Converges keep both cores busy; verifies mostly wait on tasks,
# services and timeouts. Each scenario has its own containers, network, CA
# and artifacts directory, so they share nothing but the Docker engine and
# the apt cache. The background scenarios' output goes to
# artifacts/<scenario>/molecule.log and its tail is printed here when one
# fails.
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

log_of() { echo "artifacts/$1/molecule.log"; }

failed() {
  echo "molecule: $1 FAILED at $(date +%T); the end of $(log_of "$1"):"
  tail -n 250 "$(log_of "$1")"
}

# Up to a converged, idempotent cluster (the whole test for an unmanaged
# scenario, whose sequence ssh-scenario.sh runs in one go).
converged() {
  if unmanaged "$1"; then
    scripts/ssh-scenario.sh "$1"
  else
    molecule destroy --scenario-name "$1" && molecule syntax --scenario-name "$1" \
      && molecule converge --scenario-name "$1" && molecule idempotence --scenario-name "$1"
  fi
}

# The rest of the test: verify, then destroy whatever happened.
verified() {
  unmanaged "$1" && return 0
  local status=0
  molecule verify --scenario-name "$1" || status=1
  molecule destroy --scenario-name "$1" || status=1
  return "$status"
}

# The other scenarios: each one's converge waits for the one before it to be
# converged; their verifies overlap. Side by side, two converges and
# default's verify loaded this 2-core machine to a load average of 14 and a
# pool missed `celery inspect`'s 10 s timeout.
background() {
  local scenario pids=() names=() status=0 i
  for scenario in "${rest[@]}"; do
    mkdir -p "artifacts/$scenario"
    echo "molecule: $scenario started in the background at $(date +%T)"
    # At a lower CPU priority: the verifies beside it time their checks.
    if ! (renice -n 10 "$BASHPID" >/dev/null && converged "$scenario") >"$(log_of "$scenario")" 2>&1; then
      failed "$scenario"
      unmanaged "$scenario" || molecule destroy --scenario-name "$scenario" >>"$(log_of "$scenario")" 2>&1 || true
      status=1
      break
    fi
    unmanaged "$scenario" || echo "molecule: $scenario converged at $(date +%T); its verify goes on beside the next"
    { verified "$scenario" >>"$(log_of "$scenario")" 2>&1; } &
    pids+=("$!")
    names+=("$scenario")
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      echo "molecule: ${names[$i]} passed at $(date +%T) ($(log_of "${names[$i]}"))"
    else
      failed "${names[$i]}"
      status=1
    fi
  done
  return "$status"
}

status=0
bg_pid=
if converged "$first"; then
  background &
  bg_pid=$!
  verified "$first" || status=1
else
  status=1
  unmanaged "$first" || molecule destroy --scenario-name "$first" || true
fi
if [[ -n $bg_pid ]]; then
  wait "$bg_pid" || status=1
fi
exit "$status"
