#!/usr/bin/env bash
# The main job (`make demo`): on one machine, the lab (per stage its own network and hosts), the demo's two releases
# of the whole stack, release 1 promoted dev -> test -> pprd -> prod (the pprd and prod approvals given by other
# users), then release 2, then prod rolled back to release 1 with its databases restored; then status and history.
#   scripts/demo.sh [--stages dev,prod] [--pipeline FILE] [--prefix P --subnet-base A.B.C.0/24]
# --stages promotes through a subset (the CI test uses dev and prod with a pipeline of its own). The demo has its
# own state store (ITOPCTL_STATE_URL, default /var/tmp/itopctl-demo/state.db) and artifact store
# (/var/tmp/itopctl-lab-artifacts); run it again and each step finds its work done or does it again. `itopctl lab down`
# removes the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
stages=dev,test,pprd,prod
pipeline=$PWD/inventories/lab/pipeline.yml
lab_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) stages=$2; shift 2 ;;
    --pipeline) pipeline=$(realpath "$2"); shift 2 ;;
    --prefix) lab_extra+=(--prefix "$2"); shift 2 ;;
    --subnet-base) lab_extra+=(--subnet-base "$2"); shift 2 ;;
    *) echo "usage: scripts/demo.sh [--stages dev,prod] [--pipeline FILE] [--prefix P --subnet-base A.B.C.0/24]" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a stage_list <<<"$stages"
export PATH="$PWD/.venv/bin:$PATH"
export ITOPCTL_PIPELINE=$pipeline
export ITOPCTL_STATE_URL=${ITOPCTL_STATE_URL:-sqlite:////var/tmp/itopctl-demo/state.db}
export ITOPCTL_USER=${ITOPCTL_USER:-alice}
mkdir -p /var/tmp/itopctl-demo
t0=$SECONDS
say() { printf '\n[demo %4ss] %s\n' $((SECONDS - t0)) "$*"; }

say "lab up (stages ${stages})"
lab_args=()
for s in "${stage_list[@]}"; do lab_args+=(--stage "$s"); done
itopctl lab up "${lab_args[@]}" "${lab_extra[@]}"

say "build the two releases of the whole stack"
python scripts/build-releases.py
manifests=/var/tmp/itopctl-lab-artifacts/manifests

# a promotion waits for the stage's soak time, then gets the approvals it needs from people other than the promoter
promote() {
  local release=$1 stage=$2 approvers=$3
  for who in $approvers; do
    ITOPCTL_USER=$who itopctl approve "$release" --stage "$stage" --reason "demo: checked on the previous stage"
  done
  local rc=0
  for _ in $(seq 1 60); do
    rc=0; itopctl promote "$release" --to "$stage" --check >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 3 ] || break
    sleep 5
  done
  itopctl promote "$release" --to "$stage"
}
approvers_for() { case "$1" in pprd) echo bob ;; prod) echo "bob carol" ;; *) echo "" ;; esac; }

for release in demo-1 demo-2; do
  itopctl release add "$manifests/$release.yml"
  say "$release: deploy to ${stage_list[0]}"
  itopctl deploy "$release"
  for stage in "${stage_list[@]:1}"; do
    say "$release: promote to $stage"
    promote "$release" "$stage" "$(approvers_for "$stage")"
  done
done

last=${stage_list[-1]}
say "roll $last back to demo-1 (across iTop's schema change and the hub's migration: the dumps are restored)"
itopctl rollback "$last" --to demo-1 --restore-db
itopctl status
itopctl history --stage "$last"
say "done in $((SECONDS - t0)) s"
