#!/usr/bin/python
# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release
short_description: Prepare, switch, roll back and prune atomic, journaled application releases
version_added: 0.1.0
description:
  - Manages the releases of one application root on a host
    (C(releases/<id>/), C(current -> releases/<id>), C(shared/), a JSON journal and a deployment lock).
  - O(operation=prepare) fetches each artifact (C(file://), C(https://), C(s3://)) into a per-host cache keyed by
    sha256, verifies the checksum B(before) anything is unpacked, unpacks safely into a temporary directory and renames
    it to C(releases/<id>), links the shared paths and records the release as prepared.
  - O(operation=activate) writes a temporary symlink and renames it over C(current) (never C(rm) + C(ln)).
  - O(operation=rollback) goes back to the previous good release taken from the journal (never from mtimes), or to a
    named one; the release left is marked bad.
  - O(operation=prune) keeps O(keep) activated releases (by last activation in the journal) and always the current and
    previous ones; never-activated failed releases are removed and do not count.
  - O(operation=plan_rollback) says where a rollback goes and what it needs from the database in RV(plan). That is
    the same schema on both sides, a dump to restore (found by walking back the upgrade chain of the journal's
    metadata), or a refusal with its reason. It never changes anything.
  - O(operation=annotate) merges O(metadata) into a release's journal record, for what an application hook learnt
    (the schema it installed, the dump it took).
  - O(operation=lock) and O(operation=unlock) manage a leased deployment lock; an expired lock may be taken over and
    the takeover is recorded in the journal.
  - Every read-modify-write of the journal and the lock happens under C(flock) on C(<root>/.journal.lock).
  - Crash safe. A change that takes several steps on disk is announced in the journal first; a run killed at any
    point is completed or forgotten by the next operation, as the disk says (RV(recovered)), so that C(current)
    always names a complete release and running the same task again does what was asked.
author:
  - Université de Strasbourg, DNUM (@unistra)
requirements:
  - Python 3.11 or later on the target
  - boto3, only for C(s3://) artifacts
attributes:
  check_mode:
    support: full
    description:
      - Reports exactly what would change and touches nothing (no download, no lock file, no journal write).
      - The state returned is the one on disk; RV(release) and RV(removed) name what would be acted on.
  diff_mode:
    support: none
    description: The result holds the journal state instead.
  platform:
    support: full
    platforms: posix
    description: Needs symlinks, rename(2) and flock(2).
options:
  root:
    description: The application root, for example C(/srv/itop).
    type: path
    required: true
  operation:
    description: The step to run.
    type: str
    required: true
    choices: [prepare, activate, rollback, plan_rollback, annotate, prune, info, lock, unlock, mark_failed]
  release:
    description:
      - The release id, 1 to 64 characters among letters, digits, C(.), C(_), C(-), starting with a letter or a digit;
        C(current), C(shared) and C(releases) are reserved.
      - Required by O(operation=prepare), O(operation=activate), O(operation=annotate) and O(operation=mark_failed).
      - With O(operation=rollback) and O(operation=plan_rollback), the release to go back to (default is the previous
        good release from the journal).
    type: str
  artifacts:
    description:
      - The archives of the release (tar, tar.gz, tar.bz2, tar.xz or zip), unpacked in order. Required by
        O(operation=prepare).
      - Archives are refused when a member has an absolute name, a C(..) component, is a symlink or hard link that
        resolves outside the release, is a device file, a FIFO or a sparse file, or when the archive goes over
        O(unpack_limits). Once every artifact is in place, every symlink of the release must resolve inside it.
      - A damaged archive (bad gzip, bz2 or xz trailer, bad zip CRC, truncated data) is refused even when its sha256
        matches. A refused archive leaves nothing behind.
    type: list
    elements: dict
    suboptions:
      uri:
        description: Where the archive is, C(file:///path), C(https://host/path) or C(s3://bucket/key).
        type: str
        required: true
      sha256:
        description: The expected sha256 of the archive, 64 hexadecimal characters. Checked before unpacking.
        type: str
        required: true
      dest:
        description: Directory relative to the release where the archive goes, for example C(extensions/ticket).
        type: str
        default: ""
      subdir:
        description: Only this directory of the archive is unpacked, and it becomes O(artifacts[].dest).
        type: str
        default: ""
  unpack_limits:
    description:
      - What one artifact may unpack to, with O(operation=prepare). Sizes are bytes, or a number with a unit
        (V(512M), V(4G)).
      - The sizes the archive declares, and the free space, are checked before anything is written; the bytes
        actually written are counted too, since headers can lie.
      - Raise a limit only for an artifact you trust.
    type: dict
    suboptions:
      max_bytes:
        description: Total size of the artifact's regular files.
        type: bytes
        default: 4G
      max_members:
        description: Entries of the archive, of any kind (files, directories, links).
        type: int
        default: 100000
      max_member_bytes:
        description: Size of one regular file.
        type: bytes
        default: 2G
      max_ratio:
        description:
          - Compression ratio, bytes unpacked per byte of archive, checked once the artifact unpacks to more than
            O(unpack_limits.ratio_threshold). Catches decompression bombs.
        type: int
        default: 200
      ratio_threshold:
        description: Below this total the ratio is not checked (a small archive of repetitive text may pass 200).
        type: bytes
        default: 64M
      max_link_target:
        description: Length of a symlink's target, in bytes.
        type: int
        default: 1024
      free_space_margin:
        description:
          - Space that must stay free on the release's file system once the artifact is unpacked, so that the
            running application never finds its disk full.
        type: bytes
        default: 256M
  shared_paths:
    description:
      - Paths relative to the release that are replaced by relative symlinks to C(shared/<path>), so that data,
        configuration and logs survive releases.
      - The first time, when the archive ships the path and C(shared/<path>) does not exist, the archive's content
        seeds C(shared/<path>); when neither exists an empty directory is created.
    type: list
    elements: str
    default: []
  owner:
    description: User that owns the unpacked release and newly created shared paths. Default is unchanged.
    type: str
  group:
    description: Group that owns the unpacked release and newly created shared paths. Default is unchanged.
    type: str
  cache_dir:
    description:
      - The per-host download cache, one file per sha256; an artifact is never downloaded twice.
      - O(operation=prune) removes from it the artifacts of the releases it removes, unless another release of
        O(root) still uses them.
    type: path
    default: /var/cache/unistra-itop/artifacts
  s3_endpoint_url:
    description: S3 endpoint URL for a non-AWS S3 service (SeaweedFS, MinIO, Ceph). Default is AWS.
    type: str
  aws_access_key:
    description: S3 access key. When omitted boto3 looks up C(AWS_ACCESS_KEY_ID) and its configuration files.
    type: str
  aws_secret_key:
    description: S3 secret key. When omitted boto3 looks up C(AWS_SECRET_ACCESS_KEY) and its configuration files.
    type: str
  aws_session_token:
    description: S3 session token for temporary credentials.
    type: str
  region:
    description: S3 region.
    type: str
  validate_certs:
    description: Verify TLS certificates of C(https://) and C(s3://) sources. Set to V(false) only in a lab.
    type: bool
    default: true
  metadata:
    description:
      - "Merged into the release's journal record, for example C({schema_version: 3.2.0-r2})."
      - Used by O(operation=prepare), O(operation=activate) and O(operation=annotate) (required there).
      - The database-aware rollback reads C(schema_version), C(upgraded_from) and C(db_dump) from it.
    type: dict
  keep:
    description: Activated releases kept by O(operation=prune); the current and previous releases are always kept.
    type: int
    default: 5
  owner_name:
    description:
      - Who runs the operation, recorded in the journal and the lock.
      - Default is C($SUDO_USER), else C($USER), else the user running the module.
    type: str
  reason:
    description: Why, recorded in the journal (O(operation=lock), O(operation=rollback), O(operation=mark_failed)).
    type: str
  lease:
    description: Lock lease in seconds; after it the lock may be taken over without O(force).
    type: int
    default: 1800
  lock_id:
    description:
      - A caller-chosen token for the lock. Locking again with the same token renews the lease.
      - O(operation=unlock) releases the lock held with this token (or, without a token, the one held by O(owner_name)).
      - Given to any other changing operation, that operation is refused while a live lock with another token is held.
    type: str
  restore_db:
    description:
      - With O(operation=plan_rollback), the operator allows restoring the database when the schema differs; without
        it such a rollback is planned as refused.
    type: bool
    default: false
  restored_db:
    description:
      - With O(operation=rollback), the caller restored the target's database (the dump of the plan) for this
        rollback. The releases built against the schemas that restore removed are marked C(schema_stale); they can
        come back only through a new O(operation=prepare), never by activate, even with O(force).
    type: bool
    default: false
  checksum:
    description:
      - With O(operation=info), also return the checksum of the current release's tree in RV(tree), over every path,
        kind, mode and content (links not followed; Python byte-code caches left out). A release is immutable once
        prepared, so a checksum that changed means the tree was changed by hand (itopctl's drift check compares it).
    type: bool
    default: false
  force:
    description:
      - With O(operation=lock) or O(operation=unlock), take over or release a lock held by someone else (recorded).
      - With O(operation=activate), activate a release marked bad (not one marked C(schema_stale)).
    type: bool
    default: false
notes:
  - O(operation=rollback) without O(release) moves one step back each time it runs (except the retry of a rollback
    killed after its switch, which the recovery completes); name the target for an idempotent rollback.
  - Prune never removes the current release, the previous one (RV(previous)) nor the one a rollback would go to
    (RV(rollback_target)).
"""

EXAMPLES = r"""
- name: Take the deployment lock
  unistra.itop.release:
    root: /srv/itop
    operation: lock
    reason: deploy 2026.11.28-1
    lock_id: "{{ deploy_lock_id }}"
    lease: 3600

- name: Prepare a release from S3 with an extension from a local file
  unistra.itop.release:
    root: /srv/itop
    operation: prepare
    release: 2026.11.28-1
    artifacts:
      - uri: s3://artifacts/itop/itop-3.2.0.tar.gz
        sha256: 5f0c6f9c2b2a41d1c0b8fa2b1a0c3a4e9d1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f
        subdir: web
      - uri: file:///srv/artifacts/unistra-ticket-1.2.0.tar.gz
        sha256: 0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e
        dest: extensions/unistra-ticket
    shared_paths: [conf, data, log]
    owner: www-data
    group: www-data
    s3_endpoint_url: http://127.0.0.1:8333
    aws_access_key: "{{ vault_s3_access_key }}"
    aws_secret_key: "{{ vault_s3_secret_key }}"
    metadata:
      schema_version: 3.2.0-r2

- name: Prepare a release whose wheelhouse is larger than the default limits allow
  unistra.itop.release:
    root: /srv/hub
    operation: prepare
    release: 2026.11.28-1
    artifacts:
      - uri: https://artifacts.example.org/hub/hub-2026.11.28-1-wheels.tar.gz
        sha256: 9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b
    unpack_limits:
      max_bytes: 8G
      max_member_bytes: 3G

- name: Switch to it
  unistra.itop.release:
    root: /srv/itop
    operation: activate
    release: 2026.11.28-1

- name: Roll back to the previous good release
  unistra.itop.release:
    root: /srv/itop
    operation: rollback
    reason: verify failed

- name: Roll back to a named release
  unistra.itop.release:
    root: /srv/itop
    operation: rollback
    release: 2026.11.20-3

- name: Plan a rollback; the application role restores the dump when the plan says so
  unistra.itop.release:
    root: /srv/itop
    operation: plan_rollback
    restore_db: "{{ restore_db | default(false) }}"
  register: itop_rollback_plan

- name: Record what the installer did
  unistra.itop.release:
    root: /srv/itop
    operation: annotate
    release: 2026.11.28-1
    metadata:
      schema_version: 3.2.0-r2
      upgraded_from: 2026.11.20-3
      db_dump: /srv/itop/shared/backups/2026.11.28-1.sql.gz

- name: Keep three activated releases
  unistra.itop.release:
    root: /srv/itop
    operation: prune
    keep: 3

- name: Read the state
  unistra.itop.release:
    root: /srv/itop
    operation: info
  register: itop_release_info

- name: Release the lock
  unistra.itop.release:
    root: /srv/itop
    operation: unlock
    lock_id: "{{ deploy_lock_id }}"
"""

RETURN = r"""
root:
  description: The application root.
  returned: always
  type: str
  sample: /srv/itop
current:
  description:
    - The current release id after the operation, or null.
    - In check mode every state key (RV(current), RV(previous), RV(rollback_target), RV(releases), RV(history),
      RV(lock)) reports the state on disk, since nothing moved; what would happen is in C(changed), RV(release),
      RV(removed) and RV(msg). A check-mode rollback thus tells where a rollback goes (RV(release)) from where
      (RV(current)).
  returned: always
  type: str
  sample: 2026.11.28-1
previous:
  description:
    - The release that was current just before the current one (even if it was since marked bad), or null.
    - Prune never removes it.
  returned: always
  type: str
  sample: 2026.11.20-3
rollback_target:
  description:
    - The release a rollback without O(release) would go to (the last one activated before current that is not bad
      or failed and still present), or null. Prune never removes it.
  returned: always
  type: str
  sample: 2026.11.20-3
release:
  description: The release id acted on (for info, the current one).
  returned: when an operation names or selects a release
  type: str
  sample: 2026.11.28-1
path:
  description: The release directory.
  returned: when an operation acts on one release
  type: str
  sample: /srv/itop/releases/2026.11.28-1
releases:
  description: The releases in the journal, oldest prepared first.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Release id.
      type: str
    state:
      description: One of C(prepared), C(active), C(inactive), C(bad), C(failed).
      type: str
    prepared_at:
      description: When it was prepared (UTC, ISO 8601).
      type: str
    activated_at:
      description: When it was last activated (UTC, ISO 8601), or null.
      type: str
    metadata:
      description: Metadata recorded for it.
      type: dict
  sample:
    - {id: 2026.11.28-1, state: active, prepared_at: "2026-11-28T10:00:00Z", activated_at: "2026-11-28T10:05:00Z",
       metadata: {schema_version: 3.2.0-r2}}
history:
  description:
    - Journal events, newest last (C(prepare), C(activate), C(rollback), C(mark_failed), C(prune), C(lock),
      C(lock_takeover), C(unlock)), each with C(seq), C(event), C(at), C(by) and event fields such as C(release),
      C(from), C(reason), C(removed), C(previous_owner).
  returned: always
  type: list
  elements: dict
  sample:
    - {seq: 4, event: activate, release: 2026.11.28-1, from: 2026.11.20-3, by: alice, at: "2026-11-28T10:05:00Z"}
lock:
  description: The deployment lock, or null when not locked.
  returned: always
  type: dict
  contains:
    owner:
      description: Who holds it.
      type: str
    reason:
      description: Why.
      type: str
    lock_id:
      description: The token that renews and releases it.
      type: str
    lease:
      description: Lease in seconds.
      type: int
    host:
      description: The host the lock was taken from.
      type: str
    acquired_at:
      description: When it was taken (UTC, ISO 8601).
      type: str
    expires_at:
      description: When the lease ends (UTC, ISO 8601).
      type: str
    expired:
      description: Whether the lease has ended.
      type: bool
tree:
  description:
    - The current release tree's checksum, with O(operation=info) and O(checksum); null when nothing is current.
  returned: when O(operation=info) and O(checksum)
  type: dict
  contains:
    checksum:
      description: C(sha256) and the hex digest over every entry path, kind, mode and content or link target.
      type: str
    files:
      description: The regular files counted.
      type: int
    bytes:
      description: Their total size.
      type: int
  sample: {checksum: "sha256:9b2f...", files: 4211, bytes: 52428800}
removed:
  description: Release ids removed (or that would be removed in check mode) by prune.
  returned: when O(operation=prune)
  type: list
  elements: str
  sample: [2026.10.02-1]
removed_tmp:
  description: Leftover temporary items removed by prune.
  returned: when O(operation=prune)
  type: list
  elements: str
  sample: [.tmp-2026.11.28-1-1a2b3c4d]
removed_cache:
  description: sha256 of the cached artifacts removed by prune along with their releases.
  returned: when O(operation=prune)
  type: list
  elements: str
  sample: [5f0c6f9c2b2a41d1c0b8fa2b1a0c3a4e9d1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f]
removed_dumps:
  description:
    - The database dumps (the C(db_dump) the application recorded in a release's metadata) removed by prune along
      with their releases; a dump another kept release names stays.
  returned: when O(operation=prune)
  type: list
  elements: str
  sample: [/srv/itop/shared/backups/2026.10.02-1.sql.gz]
removed_unjournaled:
  description: Release directories unknown to the journal (made by hand, or left by an older version), removed by prune.
  returned: when O(operation=prune)
  type: list
  elements: str
  sample: [2026.11.27-9]
recovered:
  description:
    - What the recovery of a killed run did before this operation, each C({op, release, outcome}) with C(outcome)
      C(completed) (the change had reached the disk and is now recorded) or C(abandoned) (it had not; its leftovers
      were removed). Empty when no run was interrupted.
  returned: always
  type: list
  elements: dict
  sample: [{op: rollback, release: 2026.11.20-3, outcome: completed}]
plan:
  description: The database side of the rollback, from O(operation=plan_rollback).
  returned: when O(operation=plan_rollback)
  type: dict
  contains:
    action:
      description:
        - C(none) (the target is current), C(switch) (same schema), C(restore) (restore RV(plan.dump) first) or
          C(refuse) (see RV(plan.reason)).
      type: str
    target:
      description: The release the rollback goes to.
      type: str
    current:
      description: The current release.
      type: str
    schema_from:
      description: The schema of the current release, or null.
      type: str
    schema_to:
      description: The schema of the target, or null.
      type: str
    schema_changes:
      description: Whether they differ.
      type: bool
    restore_via:
      description: The release whose upgrade started from the target; the dump taken before it restores the target.
      type: str
    dump:
      description: That dump.
      type: str
    reason:
      description: Why the rollback is refused, and what to do.
      type: str
  sample: {action: restore, target: 2026.11.20-3, current: 2026.11.28-1, schema_from: 9f1c, schema_to: 2b7a,
           schema_changes: true, restore_via: 2026.11.28-1, dump: /srv/itop/shared/backups/2026.11.28-1.sql.gz,
           reason: ""}
artifacts:
  description:
    - The artifacts fetched by prepare, with C(downloaded) false when the cache already held them.
    - Empty when nothing had to be fetched.
  returned: when O(operation=prepare)
  type: list
  elements: dict
  sample:
    - uri: s3://artifacts/itop/itop-3.2.0.tar.gz
      sha256: 5f0c6f9c2b2a41d1c0b8fa2b1a0c3a4e9d1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f
      dest: ""
      subdir: web
      downloaded: true
msg:
  description: What happened, or what to do on an error.
  returned: always
  type: str
  sample: release 2026.11.28-1 activated (was 2026.11.20-3)
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.urls import open_url
from ansible_collections.unistra.itop.plugins.module_utils.artifacts import (
    DEFAULT_CACHE_DIR,
    S3Settings,
    boto3_available,
)
from ansible_collections.unistra.itop.plugins.module_utils.release import (
    DEFAULT_KEEP,
    DEFAULT_LEASE,
    OPERATIONS,
    ReleaseManager,
)
from ansible_collections.unistra.itop.plugins.module_utils.rules import MissingLibraryError, ReleaseError
from ansible_collections.unistra.itop.plugins.module_utils.unpack import UnpackLimits

# unpack_limits suboptions: (name, argument type); defaults come from UnpackLimits, the one place they are defined.
UNPACK_LIMIT_TYPES = (
    ("max_bytes", "bytes"),
    ("max_members", "int"),
    ("max_member_bytes", "bytes"),
    ("max_ratio", "int"),
    ("ratio_threshold", "bytes"),
    ("max_link_target", "int"),
    ("free_space_margin", "bytes"),
)


def argument_spec():
    return dict(
        root=dict(type="path", required=True),
        operation=dict(type="str", required=True, choices=list(OPERATIONS)),
        release=dict(type="str"),
        artifacts=dict(
            type="list",
            elements="dict",
            options=dict(
                uri=dict(type="str", required=True),
                sha256=dict(type="str", required=True),
                dest=dict(type="str", default=""),
                subdir=dict(type="str", default=""),
            ),
        ),
        unpack_limits=dict(
            type="dict",
            apply_defaults=True,
            options={name: dict(type=kind, default=getattr(UnpackLimits, name)) for name, kind in UNPACK_LIMIT_TYPES},
        ),
        shared_paths=dict(type="list", elements="str", default=[]),
        owner=dict(type="str"),
        group=dict(type="str"),
        cache_dir=dict(type="path", default=DEFAULT_CACHE_DIR),
        s3_endpoint_url=dict(type="str"),
        aws_access_key=dict(type="str", no_log=True),
        aws_secret_key=dict(type="str", no_log=True),
        aws_session_token=dict(type="str", no_log=True),
        region=dict(type="str"),
        validate_certs=dict(type="bool", default=True),
        metadata=dict(type="dict"),
        keep=dict(type="int", default=DEFAULT_KEEP),
        owner_name=dict(type="str"),
        reason=dict(type="str"),
        lease=dict(type="int", default=DEFAULT_LEASE),
        lock_id=dict(type="str", no_log=False),
        force=dict(type="bool", default=False),
        restore_db=dict(type="bool", default=False),
        restored_db=dict(type="bool", default=False),
        checksum=dict(type="bool", default=False),
    )


def http_open(url, validate_certs, timeout):
    """https:// downloads go through Ansible's open_url (proxy settings, CA bundles, client conventions)."""
    return open_url(url, validate_certs=validate_certs, timeout=timeout, http_agent="unistra.itop.release")


def prepare(manager, params):
    return manager.prepare(
        params["release"],
        params["artifacts"] or [],
        shared_paths=params["shared_paths"],
        owner=params["owner"],
        group=params["group"],
        cache_dir=params["cache_dir"],
        s3=S3Settings(
            endpoint_url=params["s3_endpoint_url"],
            access_key=params["aws_access_key"],
            secret_key=params["aws_secret_key"],
            session_token=params["aws_session_token"],
            region=params["region"],
        ),
        validate_certs=params["validate_certs"],
        metadata=params["metadata"],
        http_open=http_open,
        limits=UnpackLimits(**params["unpack_limits"]),
    )


OPERATION_HANDLERS = {
    "prepare": prepare,
    "activate": lambda m, p: m.activate(p["release"], metadata=p["metadata"], force=p["force"]),
    "rollback": lambda m, p: m.rollback(p["release"], reason=p["reason"], restored_db=p["restored_db"]),
    "plan_rollback": lambda m, p: m.plan_rollback(p["release"], restore_db=p["restore_db"]),
    "annotate": lambda m, p: m.annotate(p["release"], p["metadata"]),
    "prune": lambda m, p: m.prune(p["keep"], cache_dir=p["cache_dir"]),
    "mark_failed": lambda m, p: m.mark_failed(p["release"], reason=p["reason"]),
    "lock": lambda m, p: m.lock(reason=p["reason"], lease=p["lease"], lock_id=p["lock_id"], force=p["force"]),
    "unlock": lambda m, p: m.unlock(lock_id=p["lock_id"], force=p["force"]),
    "info": lambda m, p: m.info(checksum=p["checksum"]),
}


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_if=[
            ("operation", "prepare", ("release", "artifacts")),
            ("operation", "activate", ("release",)),
            ("operation", "mark_failed", ("release",)),
            ("operation", "annotate", ("release", "metadata")),
        ],
    )
    params = module.params
    wants_s3 = any(str(a.get("uri", "")).startswith("s3://") for a in params["artifacts"] or [])
    if params["operation"] == "prepare" and wants_s3 and not boto3_available():
        module.fail_json(msg=missing_required_lib("boto3"))
    try:
        manager = ReleaseManager(
            params["root"], check_mode=module.check_mode, owner_name=params["owner_name"], lock_id=params["lock_id"]
        )
        result = OPERATION_HANDLERS[params["operation"]](manager, params)
    except MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib(exc.library), root=module.params["root"])
    except ReleaseError as exc:
        module.fail_json(msg=str(exc), root=module.params["root"])
    except OSError as exc:
        # Anything the engine did not anticipate (permissions, full disk): still a message, never a traceback.
        module.fail_json(msg=f"{module.params['operation']} failed in {module.params['root']}: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
