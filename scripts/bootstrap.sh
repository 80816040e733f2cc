#!/usr/bin/env bash
# Install everything the lab and the tests need on a Debian controller (root).
# Idempotent: each step checks before it acts, so a second run takes seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
log() { printf '==> %s\n' "$*"; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
dpkg -s debian-archive-keyring >/dev/null 2>&1 || need_pkgs+=(debian-archive-keyring)
[ -x /usr/sbin/apt-cacher-ng ] || need_pkgs+=(apt-cacher-ng)
# The Flower test drives a real browser: Debian's headless Chromium through
# chromedriver, trusting the lab CA through an NSS database (certutil).
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_pkgs+=(chromium-driver)
command -v certutil >/dev/null 2>&1 || need_pkgs+=(libnss3-tools)
# The SSH scenario (scripts/ssh-scenario.sh): an operator account with a
# venv of Debian's python3, reaching its hosts with OpenSSH.
command -v ssh >/dev/null 2>&1 || need_pkgs+=(openssh-client)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# One Debian package cache for every container (and the image build).
"$here/scripts/apt-cache.sh"

# The Debian package installs dockerd; this host has no systemd, so start it
# in the background when its socket does not answer.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -n 50 /var/log/dockerd.log; echo "dockerd did not start" >&2; exit 1; }
fi

# Python tooling, pinned in requirements-dev.txt. Reinstalled only when the
# pins change (their hash is kept in the venv).
want=$(sha256sum "$here/requirements-dev.txt" | cut -d' ' -f1)
have=$(cat "$venv/.requirements.sha256" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  log "creating the Python virtual environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$here/requirements-dev.txt"
  echo "$want" >"$venv/.requirements.sha256"
fi
log "controller ready: $("$venv/bin/ansible" --version | sed -n 1p)"
