#!/usr/bin/env bash
# Installs everything xoauth-proxy needs to build and to run its test bed, from Debian 12 packages.
# Idempotent: installs only what is missing; never starts the system-wide mail daemons.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config
  libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev
  libssl-dev libtomlplusplus-dev libfmt-dev libspdlog-dev libcli11-dev libargon2-dev libgtest-dev
  # test bed: real servers standing in for Exchange Online, and real clients
  dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd
  postfix swaks msmtp fetchmail
  openssl ca-certificates curl python3
  # headless browser for the sign-in page tests (Chrome DevTools Protocol over a websocket)
  chromium python3-websocket
  # packaging and the container test: image build and run (rootful podman with runc, a local
  # debootstrap base), the .deb's manual page, and the checkers of examples/
  podman runc debootstrap help2man systemd python3-yaml
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"

# Keep maintainer scripts from starting system daemons that would listen on 143/110/25.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { [ "$created_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d; true; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
  $SUDO apt-get update -q
fi
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "setup: done"
