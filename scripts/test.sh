#!/usr/bin/env bash
# Run the test suites.
#   scripts/test.sh fast   lint + unit tests: no Docker, about a minute
#   scripts/test.sh all    everything CI runs: lint, unit, integration (lab containers, PostgreSQL, SeaweedFS), Molecule
#   scripts/test.sh molecule [SCENARIO...]
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$PWD/collections"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
what="${1:-all}"; shift || true

passed=0; failed=0; failures=()
step() {
  local name=$1; shift
  printf '\n===== %s =====\n' "$name"
  local t0=$SECONDS
  if "$@"; then passed=$((passed + 1)); printf '===== %s: ok (%ss)\n' "$name" $((SECONDS - t0))
  else failed=$((failed + 1)); failures+=("$name"); printf '===== %s: FAILED (%ss)\n' "$name" $((SECONDS - t0)); fi
}

# Independent suites run side by side (2 cores: ansible-lint and ansible-test each keep one busy); each one's output
# is printed whole when it ends, in the order they were started.
bg_names=(); bg_pids=(); bg_logs=(); bg_t0=$SECONDS
step_bg() {
  local name=$1; shift
  local log; log=$(mktemp)
  ( "$@" ) >"$log" 2>&1 &
  bg_names+=("$name"); bg_pids+=("$!"); bg_logs+=("$log")
}
wait_bg() {
  local i
  for i in "${!bg_pids[@]}"; do
    printf '\n===== %s =====\n' "${bg_names[$i]}"
    if wait "${bg_pids[$i]}"; then cat "${bg_logs[$i]}"; passed=$((passed + 1)); printf '===== %s: ok (%ss since the start)\n' "${bg_names[$i]}" $((SECONDS - bg_t0))
    else cat "${bg_logs[$i]}"; failed=$((failed + 1)); failures+=("${bg_names[$i]}"); printf '===== %s: FAILED\n' "${bg_names[$i]}"; fi
    rm -f "${bg_logs[$i]}"
  done
  bg_names=(); bg_pids=(); bg_logs=()
}

lint() {
  bg_t0=$SECONDS
  step_bg ansible-lint ansible-lint --profile production
  step_bg ansible-test-sanity bash scripts/sanity.sh
  step ruff ruff check .
  step ruff-format ruff format --check .
  step mypy mypy
}

molecule_all() {
  local scenarios=("$@")
  if [ "${#scenarios[@]}" -eq 0 ]; then
    for f in molecule/*/molecule.yml; do scenarios+=("$(basename "$(dirname "$f")")"); done
  fi
  for s in "${scenarios[@]}"; do step "molecule:$s" molecule test -s "$s"; done
}

case "$what" in
  fast)
    lint
    step pytest-unit pytest -q -m "not docker and not postgres and not slow" tests
    wait_bg
    ;;
  all)
    lint
    wait_bg
    UNISTRA_ITOP_STRICT_SKIPS=1 step pytest pytest -q --durations=15 tests
    molecule_all
    ;;
  molecule) molecule_all "$@" ;;
  *) echo "usage: scripts/test.sh [fast|all|molecule [SCENARIO...]]" >&2; exit 2 ;;
esac

printf '\n'
[ "$failed" -gt 0 ] && printf 'failed suites: %s\n' "${failures[*]}"
printf 'suites: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
