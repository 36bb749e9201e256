#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test, once.
# Prints the browser's path.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo /usr/bin/chromium
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2 || true
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
echo /usr/bin/chromium
