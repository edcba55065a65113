#!/usr/bin/env bash
# Make the Docker lab usable on this machine, then build (or reuse) the systemd base image.
#
#   scripts/lab-image.sh            install docker.io/debootstrap if missing, start dockerd, build the image if absent
#   scripts/lab-image.sh --rebuild  rebuild the image even if it exists
#
# No container registry is reachable: the image is a debootstrap of Debian 12 imported with `docker import`.
# The Debian mirror is read from this machine's own apt sources, never written here.
set -euo pipefail

IMAGE="${LAB_IMAGE:-unistra-itop/debian12-systemd:latest}"
# The image is labelled with this script's checksum: changing the recipe rebuilds it, anything else reuses it.
RECIPE=$(sha256sum "$0" | cut -c1-16)
REBUILD=0
[ "${1:-}" = "--rebuild" ] && REBUILD=1

log() { printf '[lab-image] %s\n' "$*" >&2; }
die() { printf '[lab-image] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (apt-get, dockerd and debootstrap need it)"; }

apt_install() {
  need_root
  log "installing: $*"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  # docker.io's Recommends carry iptables; without it dockerd cannot set up bridge networks
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  need_root
  log "dockerd is not running: starting it in the background (log: /var/log/unistra-itop-dockerd.log)"
  nohup dockerd >/var/log/unistra-itop-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { log "dockerd is up"; return 0; }
    sleep 1
  done
  tail -n 20 /var/log/unistra-itop-dockerd.log >&2 || true
  die "dockerd did not answer within 60 s; see /var/log/unistra-itop-dockerd.log"
}

# The first deb822 "URIs:" (or one-line "deb URL") of the machine's apt sources.
debian_mirror() {
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -v security | awk '{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' | head -n1 || true)
  fi
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list*; configure apt first"
  printf '%s\n' "$uri"
}

build_image() {
  need_root
  local rootfs mirror
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d /var/tmp/unistra-itop-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs'" EXIT
  log "debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/var/log/unistra-itop-debootstrap.log 2>&1 \
    || { tail -n 20 /var/log/unistra-itop-debootstrap.log >&2; die "debootstrap failed"; }
  # Services must not start inside the chroot while the image is built.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  # apt lists stay in the image: roles install packages without a first `apt-get update`
  chroot "$rootfs" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends systemd systemd-sysv dbus python3 python3-apt sudo ca-certificates iproute2 procps \
      && apt-get clean' >>/var/log/unistra-itop-debootstrap.log 2>&1 \
    || { tail -n 20 /var/log/unistra-itop-debootstrap.log >&2; die "installing systemd/python3 in the chroot failed"; }
  rm -f "$rootfs/usr/sbin/policy-rc.d" "$rootfs/etc/resolv.conf"
  # Units that only make sense on a real machine slow down or fail a container boot.
  for unit in systemd-remount-fs.service getty@tty1.service systemd-firstboot.service \
              systemd-udevd.service systemd-modules-load.service sys-kernel-debug.mount; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  : >"$rootfs/etc/machine-id"
  log "importing as $IMAGE"
  tar -C "$rootfs" -c . | docker import \
    -c 'CMD ["/sbin/init"]' -c 'ENV container=docker' \
    -c "LABEL org.unistra.itop.recipe=$RECIPE" - "$IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
}

ensure_tools
mkdir -p /var/cache/unistra-itop/apt
ensure_dockerd
current=$(docker image inspect -f '{{ index .Config.Labels "org.unistra.itop.recipe" }}' "$IMAGE" 2>/dev/null || true)
if [ "$REBUILD" -eq 0 ] && [ "$current" = "$RECIPE" ]; then
  log "reusing existing image $IMAGE"
else
  build_image
  log "built $IMAGE"
fi
