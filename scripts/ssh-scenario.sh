#!/usr/bin/env bash
# Runs a molecule scenario the way an operator deploys: `molecule test` as
# an unprivileged controller account (scripts/operator-account.sh: no sudo,
# no Docker, its own copy of the project and its own venv), reaching the
# hosts over SSH as `deploy` with sudo. Root only does what a cloud provider
# does: starts the servers, hands them the operator's key and records their
# host keys (molecule/shared/ssh-servers.yml), and removes them at the end.
#
#   scripts/ssh-scenario.sh SCENARIO      (as root; make molecule calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: $0 SCENARIO}
here=$PWD
export ANSIBLE_CONFIG=$here/ansible.cfg
operator=$(scripts/operator-account.sh)
home=$(getent passwd "$operator" | cut -d: -f6)

servers() {
  # Containers are the one thing the operator's account cannot touch.
  ansible-playbook -i localhost, -e 'ansible_python_interpreter={{ ansible_playbook_python }}' \
    molecule/shared/"$1" -e operator="$operator" \
    -e "{\"molecule_yml\": $(python3 -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' \
         "molecule/$scenario/molecule.yml")}"
}
trap 'servers destroy.yml >/dev/null || echo "ssh-scenario: removing the servers of $scenario failed" >&2' EXIT
servers destroy.yml >/dev/null
servers ssh-servers.yml
# New servers, new molecule state (the inventory, the CA beside it, what
# was prepared): molecule would otherwise skip `prepare` on hosts it never saw.
state=$home/.cache/celery-cluster/molecule/$scenario
rm -rf "$state"

# A clean login environment: nothing of root's (PATH, venv, Ansible
# settings) reaches the operator's run.
runuser --login "$operator" --command "
  set -euo pipefail
  export PATH=$home/.venv/bin:/usr/local/bin:/usr/bin:/bin
  export ANSIBLE_FORCE_COLOR=0 MOLECULE_EPHEMERAL_DIRECTORY=$state ${CI:+CI=$CI}
  cd $home/celery-cluster
  echo \"ssh-scenario: molecule test --scenario-name $scenario as \$(id -un) (uid \$(id -u)) in \$PWD\"
  # --destroy never: molecule does not own these servers (root removes them).
  molecule test --scenario-name $scenario --destroy never
"
