-- itopctl state store, schema 2: the process holding a deployment's lock (host, pid and the process's start time,
-- so a recycled pid is not taken for the holder). A lock whose holder died on this host is stale at once instead
-- of at the end of its lease; renewed_at is the holder's last heartbeat.
ALTER TABLE locks ADD COLUMN holder_host TEXT;

ALTER TABLE locks ADD COLUMN holder_pid INTEGER;

ALTER TABLE locks ADD COLUMN holder_started TEXT;

ALTER TABLE locks ADD COLUMN renewed_at TEXT;
