#!/usr/bin/env bash
# Build the lab's base image (Debian with systemd and python3) with debootstrap
# and `docker import` it. There is no container registry here, so nothing is
# pulled. The mirror is the one this controller's apt configuration names: no
# mirror host is written in this repository.
#
#   scripts/build-image.sh [trixie|bookworm]     (default: trixie)
#   FORCE=1 scripts/build-image.sh ...           rebuild even if present
set -euo pipefail
release=${1:-trixie}
image=${LAB_IMAGE_REPO:-celery-lab/debian}:$release
case "$release" in trixie|bookworm) ;; *) echo "unsupported release: $release (trixie or bookworm)" >&2; exit 2;; esac

# Bumped whenever what goes into the image changes: an image of another
# version (or none) is rebuilt, so a machine that kept an older image gets the
# new contents without FORCE.
version=2
have=$(docker image inspect --format '{{ index .Config.Labels "celery-lab.image-version" }}' "$image" 2>/dev/null || true)
if [ -z "${FORCE:-}" ] && [ "$have" = "$version" ]; then
  echo "==> $image present (version $version), reused"; exit 0
fi

mirror=$("$(dirname "$0")/debian-mirror.sh")
# Through the controller's package cache when it runs (scripts/apt-cache.sh).
if (exec 3<>/dev/tcp/127.0.0.1/3142) 2>/dev/null; then export http_proxy=http://127.0.0.1:3142; fi

root=$(mktemp -d /var/tmp/lab-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "==> debootstrap $release from $mirror"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,procps,ca-certificates,libpam-systemd,openssh-server,sudo \
  "$release" "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 40 "$root.log"; exit 1; }
rm -f "$root.log"

cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror $release main
deb $mirror $release-updates main
SRC
# An empty machine-id: each container gets its own at first boot.
: >"$root/etc/machine-id"
# Units that have no meaning in a container.
for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
            systemd-remount-fs.service sys-kernel-debug.mount sys-kernel-tracing.mount; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# Hosts are reached over SSH like real servers (the logging scenario): every
# container must have host keys of its own, never ones baked into the image.
# The keys are made at first boot, before sshd starts, as a cloud image does.
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate this host's SSH host keys (first boot)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
UNIT
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'UNIT'
[Unit]
Wants=ssh-hostkeys.service
After=ssh-hostkeys.service
UNIT
# The package lists stay: cache_valid_time then means what it says.
rm -rf "$root"/var/cache/apt/archives/*.deb

echo "==> importing $image"
tar -C "$root" -c . | docker import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=docker' \
  --change "LABEL celery-lab.image-version=$version" \
  - "$image" >/dev/null
echo "==> built $image"
