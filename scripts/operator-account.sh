#!/usr/bin/env bash
# The controller account of an operator, for the scenarios that test the
# production path (scripts/ssh-scenario.sh): an unprivileged user with no
# sudo on this machine and no access to Docker, an SSH key of its own, its
# own copy of this project and its own virtual environment built from
# Debian's python3 (the root-owned one cannot serve it: root's home is 0700).
# Run as root; idempotent: a second run refreshes the project copy and
# reinstalls Python packages only when requirements-dev.txt changed.
#
#   scripts/operator-account.sh            prints the account's name
#
# Environment: CELERY_OPERATOR (default celeryop).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=${CELERY_OPERATOR:-celeryop}
log() { printf '==> %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (it creates the account)" >&2; exit 2; }
if ! id "$user" >/dev/null 2>&1; then
  log "creating the unprivileged controller account $user"
  useradd --create-home --shell /bin/bash --user-group "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
# The account must not be able to become root on the controller, or the
# scenario would not prove that nothing the bundle does needs it.
for group in sudo docker adm; do
  if id -nG "$user" | tr ' ' '\n' | grep -qx "$group"; then
    echo "$0: $user is in group $group; it must be an unprivileged account" >&2; exit 1
  fi
done
as_user() { runuser -u "$user" -- "$@"; }

if [ ! -f "$home/.ssh/id_ed25519" ]; then
  log "creating $user's SSH key"
  as_user mkdir -p -m 0700 "$home/.ssh"
  as_user ssh-keygen -q -t ed25519 -N '' -C "$user@controller" -f "$home/.ssh/id_ed25519"
fi

# The project as an operator has it: a copy of their own, not root's tree.
# Tracked and untracked-but-not-ignored files, as git sees them (the working
# tree, so a developer's uncommitted change is what runs), plus the lab
# secrets, which play the operator's vault.
project=$home/celery-cluster
log "copying the project to $project"
rm -rf "$project"
as_user mkdir -p "$project/.lab"
(cd "$here" && git ls-files -z --cached --others --exclude-standard \
   | while IFS= read -r -d '' f; do if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done \
   | tar --create --no-recursion --null --files-from=-) \
  | as_user tar --extract --directory "$project" --no-same-owner --no-same-permissions
install -o "$user" -g "$user" -m 0600 "$here/.lab/secrets.yml" "$project/.lab/secrets.yml"
# A repository, as an operator's clone is: molecule looks for its base config
# (.config/molecule/config.yml) at the repository's root.
as_user git -C "$project" init --quiet

venv=$home/.venv
want=$(sha256sum "$here/requirements-dev.txt" | cut -d' ' -f1)
have=$(cat "$venv/.requirements.sha256" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  log "creating $user's Python virtual environment (Debian's python3)"
  as_user /usr/bin/python3 -m venv --clear "$venv"
  as_user "$venv/bin/pip" install -q --upgrade pip
  as_user "$venv/bin/pip" install -q -r "$project/requirements-dev.txt"
  echo "$want" | as_user tee "$venv/.requirements.sha256" >/dev/null
fi
echo "$user"
