#!/usr/bin/env bash
# Local PostgreSQL for the itopctl state-store tests (tests/orchestrator, marker `postgres`), idempotently:
# install the Debian package if missing, start the cluster with pg_ctlcluster (no systemd on CI machines), create the
# test role and database. The tests read ITOPCTL_TEST_PG_URL; its default matches the values below.
set -euo pipefail

PG_ROLE="${ITOPCTL_TEST_PG_ROLE:-itopctl}"
PG_PASSWORD="${ITOPCTL_TEST_PG_PASSWORD:-itopctl}"   # a throw-away local test password, not a secret
PG_DB="${ITOPCTL_TEST_PG_DB:-itopctl_test}"

log() { printf '[postgresql] %s\n' "$*" >&2; }
die() { printf '[postgresql] ERROR: %s\n' "$*" >&2; exit 1; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "postgresql is not installed and we are not root"
  log "installing postgresql"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# The first cluster pg_lsclusters knows (Debian creates 15/main); create one if the package made none.
read -r version cluster status < <(pg_lsclusters --no-header | awk '{print $1, $2, $4; exit}') || true
if [ -z "${version:-}" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  cluster=main
  log "creating cluster $version/$cluster"
  pg_createcluster "$version" "$cluster" >/dev/null
  status=down
fi
if [ "$status" != "online" ]; then
  log "starting cluster $version/$cluster"
  pg_ctlcluster "$version" "$cluster" start
fi
for _ in $(seq 1 30); do
  su postgres -c "psql -Atqc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -Atqc 'select 1'" >/dev/null 2>&1 || die "cluster $version/$cluster does not answer"

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -Atq $(printf '%q ' "$@")"; }
if [ "$(psql_admin -c "select 1 from pg_roles where rolname = '$PG_ROLE'")" != "1" ]; then
  log "creating role $PG_ROLE"
  psql_admin -c "create role \"$PG_ROLE\" login createdb password '$PG_PASSWORD'"
fi
if [ "$(psql_admin -c "select 1 from pg_database where datname = '$PG_DB'")" != "1" ]; then
  log "creating database $PG_DB"
  psql_admin -c "create database \"$PG_DB\" owner \"$PG_ROLE\""
fi
log "ready: postgresql://$PG_ROLE:***@127.0.0.1:5432/$PG_DB"
