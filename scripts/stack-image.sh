#!/usr/bin/env bash
# Build (or reuse) the lab's stack image: the lab image plus every Debian package the collection's roles install,
# their services disabled (each role enables and starts what its host runs), so that `itopctl lab up` and a
# deployment in the lab download no package.
#
#   scripts/stack-image.sh            build unistra-itop/debian12-stack:latest unless it is up to date
#   scripts/stack-image.sh --rebuild  build it even if it is up to date
#
# The package list is read from the roles' own apt tasks and vars/Debian-12.yml (itopctl.lab.stack_packages), never
# written here. No registry: a container of the lab image installs them, then `docker commit`. The packages are
# installed as the roles' apt tasks install them (apt's defaults, Recommends included), so those tasks change
# nothing on a lab host. The image is labelled with a hash of its inputs (this script, the package list, the lab
# image) and rebuilt only when it differs. A killed build leaves no half image under the name: the commit goes to a
# temporary tag first, and the next run removes what a killed one left.
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."

IMAGE="${STACK_IMAGE:-unistra-itop/debian12-stack:latest}"
BASE="${LAB_IMAGE:-unistra-itop/debian12-systemd:latest}"
APT_CACHE=/var/cache/unistra-itop/apt/stack-image
BUILD_NAME=unistra-itop-stack-build
REBUILD=0
[ "${1:-}" = "--rebuild" ] && REBUILD=1

log() { printf '[stack-image] %s\n' "$*" >&2; }
die() { printf '[stack-image] ERROR: %s\n' "$*" >&2; exit 1; }

[ -x .venv/bin/python ] || die "no .venv: run scripts/setup.sh first"
docker info >/dev/null 2>&1 || die "docker is not running: run scripts/lab-image.sh first"
base_id=$(docker image inspect -f '{{.Id}}' "$BASE" 2>/dev/null) || die "no lab image $BASE: run scripts/lab-image.sh"
mapfile -t packages < <(.venv/bin/python -m itopctl.lab packages collections/ansible_collections/unistra/itop/roles)
[ "${#packages[@]}" -gt 0 ] || die "no package found in the roles' apt tasks"

inputs=$({ cat "$SELF"; printf '%s\n' "$base_id" "${packages[@]}"; } | sha256sum | cut -c1-16)
up_to_date() {
  [ "$REBUILD" -eq 0 ] || return 1
  [ "$(docker image inspect -f '{{ index .Config.Labels "org.unistra.itop.stack-inputs" }}' "$IMAGE" 2>/dev/null)" \
    = "$inputs" ] || return 1
  log "stack image up to date ($IMAGE, inputs $inputs)"
}
up_to_date && exit 0

# One build at a time (a build that held the lock meanwhile may have made it); under the lock, what a killed build
# left (its container, its temporary tag) is removed.
mkdir -p /var/lock "$APT_CACHE"
exec 9>/var/lock/unistra-itop-stack-image.lock
flock 9
up_to_date && exit 0
cleanup() {
  docker ps -aq --filter "name=^${BUILD_NAME}-" | xargs -r docker rm -f >/dev/null 2>&1 || true
  # by tag, without -f: the image a temporary tag names may be tagged $IMAGE too, and keeps that tag
  docker images --format '{{.Repository}}:{{.Tag}}' --filter "reference=${IMAGE%:*}:build-*" \
    | xargs -r docker rmi >/dev/null 2>&1 || true
}
cleanup
trap cleanup EXIT

log "building $IMAGE from $BASE with ${#packages[@]} packages: ${packages[*]}"
t0=$SECONDS
build="${BUILD_NAME}-$$"
# No systemd in the build container: nothing starts, so nothing runs to be stopped and no runtime state (machine id,
# journal, a first start of a database) goes into the image. The host's apt cache keeps the .debs for the next build.
docker run -d --name "$build" -v "$APT_CACHE:/var/cache/apt/archives" "$BASE" sleep infinity >/dev/null
in_build() { docker exec -e DEBIAN_FRONTEND=noninteractive "$build" "$@"; }
# shellcheck disable=SC2016 # expanded in the container
in_build sh -ec '
  printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
  systemctl list-unit-files --state=enabled --no-legend | cut -d" " -f1 | sort >/tmp/enabled.before
  apt-get update -qq
  # unsafe-io: no fsync per file; a crash only loses this throwaway container
  apt-get install -y -qq -o Dpkg::Options::=--force-unsafe-io "$@" >/tmp/apt.log 2>&1 || { tail -n 30 /tmp/apt.log >&2; exit 1; }
  # the services and sockets the packages enabled: disabled (the roles enable what each host runs); their timers
  # (logrotate, phpsessionclean) stay as the packages set them, as on any host with these packages
  systemctl list-unit-files --state=enabled --no-legend | cut -d" " -f1 | grep -v "\.timer$" | sort >/tmp/enabled.after
  comm -13 /tmp/enabled.before /tmp/enabled.after >/tmp/enabled.new
  echo "disabling: $(tr "\n" " " </tmp/enabled.new)" >&2
  xargs -r systemctl disable --quiet </tmp/enabled.new
  missing=$(dpkg-query -W -f "\${db:Status-Abbrev} \${Package}\n" "$@" 2>&1 | grep -v "^ii " || true)
  [ -z "$missing" ] || { echo "not installed: $missing" >&2; exit 1; }
  # the Erlang cookie rabbitmq-server made would be one secret shared by every container: each host gets its own
  # (the rabbitmq role writes the cookie of the stage; Erlang makes one at a first start without it)
  rm -f /var/lib/rabbitmq/.erlang.cookie
  rm -f /usr/sbin/policy-rc.d /tmp/enabled.* /tmp/apt.log /var/cache/apt/*.bin
  rm -rf /var/log/apt/* /var/lib/apt/lists/partial/*
' stack-image "${packages[@]}"
docker stop -t 1 "$build" >/dev/null
tmp_tag="${IMAGE%:*}:build-$$"
docker commit -c 'CMD ["/sbin/init"]' -c "LABEL org.unistra.itop.stack-inputs=$inputs" \
  "$build" "$tmp_tag" >/dev/null
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
docker tag "$tmp_tag" "$IMAGE"
# the image it replaces, unless containers still use it (no -f: then it stays until they are gone)
[ -z "$previous" ] || docker rmi "$previous" >/dev/null 2>&1 || true
log "built $IMAGE (inputs $inputs) in $((SECONDS - t0)) s"
