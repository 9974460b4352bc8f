#!/usr/bin/env bash
# Installs Debian's chromium for the daemon's status-page test (a real headless browser); idempotent.
# Without it (no root, no network) that test falls back to the stdlib HTML parser and says so.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: not root or no apt-get; the status-page test uses the HTML parser" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
  apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
    || echo "ensure-chromium: chromium could not be installed; the status-page test uses the HTML parser" >&2
fi
exit 0
