-- itopctl state store, schema 5: what each host of a stage ran when itopctl's last deployment there ended (each
-- application root's current release and the checksum of its release tree, read through the release engine), the
-- reference of the drift check (`itopctl status --probe`, and before every promotion); and, on a deployment, the
-- drift it was allowed to go over (the operator's reason and what had drifted), "" when there was none.
CREATE TABLE host_trees (
  stage TEXT NOT NULL,
  host TEXT NOT NULL,
  app TEXT NOT NULL,
  current_release TEXT,
  tree_checksum TEXT,
  deployment_id INTEGER NOT NULL,
  recorded_at TEXT NOT NULL,
  PRIMARY KEY (stage, host, app)
);
ALTER TABLE deployments ADD COLUMN drift_override TEXT NOT NULL DEFAULT '';
