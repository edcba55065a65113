-- itopctl state store, schema 1. Portable SQL for SQLite and PostgreSQL; {{id}} is the dialect's
-- auto-increment primary key. Timestamps are ISO 8601 UTC strings (they sort as text). No secret is stored.
CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    digest TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at TEXT NOT NULL
);

CREATE TABLE rejections (
    release_id TEXT PRIMARY KEY REFERENCES releases (id),
    rejected_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);

CREATE TABLE approvals (
    id {{id}},
    release_id TEXT NOT NULL REFERENCES releases (id),
    stage TEXT NOT NULL,
    approver TEXT NOT NULL,
    reason TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    UNIQUE (release_id, stage, approver)
);

CREATE TABLE deployments (
    id {{id}},
    kind TEXT NOT NULL,
    release_id TEXT NOT NULL REFERENCES releases (id),
    stage TEXT NOT NULL,
    from_release TEXT,
    started_by TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration REAL,
    result TEXT NOT NULL,
    phase TEXT NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    stage_release TEXT,
    hosts TEXT NOT NULL DEFAULT '[]',
    switched_hosts TEXT NOT NULL DEFAULT '[]',
    runner_idents TEXT NOT NULL DEFAULT '[]',
    message TEXT NOT NULL DEFAULT '',
    sentry TEXT NOT NULL DEFAULT '',
    restore_db INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX deployments_stage_id ON deployments (stage, id);

CREATE INDEX deployments_release ON deployments (release_id, stage);

CREATE TABLE stage_state (
    stage TEXT PRIMARY KEY,
    current_release TEXT,
    previous_release TEXT,
    deployment_id BIGINT,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    health TEXT NOT NULL
);

CREATE TABLE locks (
    stage TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    reason TEXT NOT NULL,
    kind TEXT NOT NULL,
    token TEXT NOT NULL,
    deployment_id BIGINT,
    acquired_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE TABLE lock_events (
    id {{id}},
    stage TEXT NOT NULL,
    event TEXT NOT NULL,
    owner TEXT NOT NULL,
    previous_owner TEXT,
    reason TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL
);
