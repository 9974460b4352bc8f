#!/usr/bin/env bash
# Makes sure OpenSSH's server and client are installed (Debian's openssh-server, openssh-client):
# `skyform ssh-proxy` runs a per-connection `sshd -i` for local nodes, and the interactive tests
# drive it with a real `ssh`. Idempotent; it never starts an sshd service, and without root or
# apt-get it only says which tests will be skipped.
set -uo pipefail
have() { [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1; }
if ! have; then
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-sshd: not root or no apt-get; the SSH tests will be skipped" >&2
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's postinst from starting an sshd listening on every interface.
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  pkgs="openssh-server openssh-client"
  apt-get install -y --no-install-recommends $pkgs >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $pkgs >/dev/null 2>&1; } \
    || echo "ensure-sshd: openssh could not be installed; the SSH tests will be skipped" >&2
  [ -n "$made_policy" ] && rm -f "$policy"
fi
# sshd run as root needs its privilege-separation directory; /run is emptied at boot.
if [ "$(id -u)" = "0" ] && [ -x /usr/sbin/sshd ]; then mkdir -p /run/sshd; fi
exit 0
