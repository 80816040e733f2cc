#!/usr/bin/env bash
# `make molecule`: runs the molecule scenarios given as arguments, each the
# full `molecule test` sequence (destroy, syntax, create, prepare, converge,
# idempotence, verify, destroy).
#
# Pipelined on purpose: each scenario converges while the ones before it
# run their tests. The first (the biggest, `default`) runs in the
# foreground; once it is converged and idempotent, the second starts in the
# background while its verify runs; once the second is converged and
# idempotent, the third starts while both verify, and so on. Only one
# converge runs at a time: converges keep both cores busy, a verify mostly
# waits on tasks, services and timeouts. Each scenario has its own
# containers, network, CA and artifacts directory, so they share nothing
# but the Docker engine and the apt cache. A background scenario's output
# goes to artifacts/<scenario>/molecule.log, and its tail is printed here
# when it fails. A scenario that fails to converge starts none after it.
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

# Every background scenario reports here, whichever scenario started it.
exec 3>&1

stamped() {
  python3 -u -c 'import sys, time
for line in sys.stdin:
    sys.stdout.write(time.strftime("%H:%M:%S ") + line)'
}

# pipeline SCENARIO [NEXT...]: SCENARIO in the foreground; the next ones in
# the background once it is converged and idempotent. Returns 1 when
# SCENARIO failed, 2 when only one started after it did (which has already
# said so).
pipeline() {
  local scenario=$1 status=0 next_pid=
  shift
  if unmanaged "$scenario"; then
    # Its servers and its molecule run belong to the operator's account
    # (scripts/ssh-scenario.sh): one `molecule test`, not split in steps.
    scripts/ssh-scenario.sh "$scenario" || return 1
    if (( $# )); then in_background "$@" || return 2; fi
    return 0
  fi
  if molecule destroy --scenario-name "$scenario" \
    && molecule syntax --scenario-name "$scenario" \
    && molecule converge --scenario-name "$scenario" \
    && molecule idempotence --scenario-name "$scenario"; then
    if (( $# )); then
      in_background "$@" &
      next_pid=$!
    fi
    molecule verify --scenario-name "$scenario" || status=1
  else
    status=1
  fi
  molecule destroy --scenario-name "$scenario" || status=1
  if [[ -n $next_pid ]] && ! wait "$next_pid" && (( status == 0 )); then status=2; fi
  return "$status"
}

in_background() {
  local scenario=$1 status=0
  mkdir -p "artifacts/$scenario"
  echo "molecule: $scenario started in the background at $(date +%T)" >&3
  # Each line stamped with the time: the log is read after the fact.
  pipeline "$@" 2>&1 | stamped >"artifacts/$scenario/molecule.log" || status=${PIPESTATUS[0]}
  case $status in
    0) echo "molecule: $scenario passed at $(date +%T) (artifacts/$scenario/molecule.log)" >&3 ;;
    2) echo "molecule: $scenario passed at $(date +%T); one started after it failed" >&3 ;;
    *) echo "molecule: $scenario FAILED at $(date +%T); the end of artifacts/$scenario/molecule.log:" >&3
       tail -n 250 "artifacts/$scenario/molecule.log" >&3 ;;
  esac
  return "$status"
}

pipeline "$@"
