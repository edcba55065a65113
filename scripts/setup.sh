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

bash scripts/lab-image.sh
# the lab's hosts: the lab image + the roles' Debian packages (rebuilt only when its inputs change)
bash scripts/stack-image.sh

for part in scripts/setup.d/*.sh; do
  [ -e "$part" ] || continue
  log "running $part"
  bash "$part"
done
log "done"
