#!/usr/bin/env bash
# ansible-test sanity on the collection, with the venv's Python (no containers needed).
set -euo pipefail
cd "$(dirname "$0")/../collections/ansible_collections/unistra/itop"
export PATH="$(cd ../../../.. && pwd)/.venv/bin:$PATH"
# ansible-test lists files through git: new, untracked files are not checked until added
ansible-test sanity --color no --python 3.11 "$@"
