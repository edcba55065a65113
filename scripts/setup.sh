#!/usr/bin/env bash
# Set up everything the project and its tests need on a Debian 12 machine (run as root), idempotently:
# the Python venv (.venv) with pinned tools, the Docker engine and the lab image, and the local services the
# tests use (each in scripts/setup.d/*.sh, run in order).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export ROOT

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .venv; }
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing Python packages (pinned by constraints.txt)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# Debian packages the tests use on this machine (outside the lab's containers): the board's browser tests drive
# Debian's chromium through its chromedriver (no browser download at test time)
debian_packages=(chromium chromium-driver)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash scripts/lab-image.sh
# the lab's hosts: the lab image + the roles' Debian packages (rebuilt only when its inputs change)
bash scripts/stack-image.sh

for part in scripts/setup.d/*.sh; do
  [ -e "$part" ] || continue
  log "running $part"
  bash "$part"
done
log "done"
