#!/usr/bin/env bash
# Print the first non-security Debian archive URI this machine's apt
# configuration names (deb822 .sources or one-line .list files).
set -uo pipefail
if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; exit 0; fi
mirror=$(
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for(i=2;i<=NF;i++) print $i}'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1=="deb" {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}'
  } | grep -v -- '-security' | grep -E '/debian/?$' | head -n1
)
[ -n "$mirror" ] || { echo "no Debian mirror in the apt configuration; set DEBIAN_MIRROR" >&2; exit 1; }
echo "${mirror%/}/"
