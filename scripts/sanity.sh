#!/usr/bin/env bash
# ansible-test sanity on the collection, with the venv's Python (no containers needed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$repo/.venv/bin:$PATH"

# ansible-test bootstraps pip in its sanity venvs with a get-pip script it downloads from a host this machine cannot
# reach; it first looks in its cache, so put our offline stand-in there (it runs pip from Python's bundled wheel).
pip_version=$(python - <<'PY'
import pathlib, re, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
PY
)
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if ! cmp -s "$repo/scripts/lib/ansible-test-get-pip.py" "$cache"; then
  mkdir -p "$(dirname "$cache")"
  cp "$repo/scripts/lib/ansible-test-get-pip.py" "$cache"
fi

cd "$repo/collections/ansible_collections/unistra/itop"
# ansible-test lists files through git: new, untracked files are not checked until added
ansible-test sanity --color no --python 3.11 "$@"
