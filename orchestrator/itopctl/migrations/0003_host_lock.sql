-- itopctl state store, schema 3: the token with which a deployment holds the release engine's host locks, kept
-- until itopctl has given them back. A deployment killed before that leaves it here, and the next deployment of
-- the stage gives those host locks back first (otherwise they would refuse it until their lease ran out).
ALTER TABLE deployments ADD COLUMN host_lock_id TEXT;
